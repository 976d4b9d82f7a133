package turn

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	pionturn "github.com/pion/turn/v4"
)

func TestCredentials(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	username, credential := Credentials("s3cret", "alice", time.Hour, now)
	if want := "1700003600:alice"; username != want {
		t.Errorf("got username %q, want %q", username, want)
	}
	mac := hmac.New(sha1.New, []byte("s3cret"))
	mac.Write([]byte(username))
	if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); credential != want {
		t.Errorf("got credential %q, want %q", credential, want)
	}
}

// TestCredentialsMatchPion checks our pair against pion's own REST minting,
// which follows coturn's use-auth-secret.
func TestCredentialsMatchPion(t *testing.T) {
	u, p, err := pionturn.GenerateLongTermTURNRESTCredentials("shared", "bob", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := password("shared", u); got != p {
		t.Errorf("got %q, want %q", got, p)
	}
}

func TestParseUsername(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantUser string
		wantExp  int64
		wantErr  bool
	}{
		{name: "plain", in: "1700000000:alice", wantUser: "alice", wantExp: 1700000000},
		{name: "colon in user", in: "1700000000:a:b", wantUser: "a:b", wantExp: 1700000000},
		{name: "no user", in: "1700000000", wantErr: true},
		{name: "empty user", in: "1700000000:", wantErr: true},
		{name: "empty expiry", in: ":alice", wantErr: true},
		{name: "signed expiry", in: "-1:alice", wantErr: true},
		{name: "plus expiry", in: "+1:alice", wantErr: true},
		{name: "letters", in: "17x:alice", wantErr: true},
		{name: "overflow", in: strings.Repeat("9", 25) + ":alice", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exp, user, err := parseUsername(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if user != tt.wantUser || exp.Unix() != tt.wantExp {
				t.Errorf("got %v %q, want %v %q", exp.Unix(), user, tt.wantExp, tt.wantUser)
			}
		})
	}
}

func TestLongTermKeyMatchesPion(t *testing.T) {
	u := "1700000000:alice"
	want := pionturn.GenerateAuthKey(u, "parley", password("x", u))
	if got := longTermKey("x", u, "parley"); !hmac.Equal(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
}
