// Command fake-gcs-server serves upstream fake-gcs-server's storage (its fakestorage package, pinned
// in go.mod) over plain HTTP on a loopback port for Barge's GCS backend tests.
//
// Upstream lacks one XML API request (fsouza/fake-gcs-server#331): the simple object upload
// `PUT /BUCKET/OBJECT`, which object_store (Barge's GCS client) uses for every write, with the
// create-only precondition in `x-goog-if-generation-match: 0`. This command forwards that request
// to upstream's own JSON API media upload, the precondition becoming `ifGenerationMatch`, so
// upstream's storage decides create-only semantics atomically; the answer is translated back to
// what GCS's XML API returns (ETag = hex MD5, 412 PreconditionFailed). Nothing else is changed.
package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"

	"github.com/fsouza/fake-gcs-server/fakestorage"
)

func main() {
	flags := flag.NewFlagSet("fake-gcs-server", flag.ContinueOnError)
	host := flags.String("host", "127.0.0.1", "address to listen on")
	port := flags.Uint("port", 4443, "port to listen on")
	root := flags.String("filesystem-root", "", "keep objects under this directory (default: in memory)")
	if err := flags.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	address := net.JoinHostPort(*host, fmt.Sprint(*port))
	server, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme:      "http",
		Host:        *host,
		Port:        uint16(*port),
		NoListener:  true,
		StorageRoot: *root,
		PublicHost:  address,
		ExternalURL: "http://" + address,
	})
	if err != nil {
		log.Fatalf("fake-gcs-server: %v", err)
	}
	listener, err := net.Listen("tcp", address)
	if err != nil {
		log.Fatalf("fake-gcs-server: %v", err)
	}
	log.Printf("server started at http://%s", address)
	log.Fatal(http.Serve(listener, withXMLUpload(address, server.HTTPHandler())))
}

// withXMLUpload answers XML API simple uploads through upstream's JSON API; all else goes to upstream.
func withXMLUpload(publicHost string, upstream http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bucket, object, ok := xmlUploadTarget(publicHost, r)
		if !ok {
			upstream.ServeHTTP(w, r)
			return
		}
		query := url.Values{"uploadType": {"media"}, "name": {object}}
		if generation := r.Header.Get("x-goog-if-generation-match"); generation != "" {
			query.Set("ifGenerationMatch", generation)
		}
		upload := r.Clone(r.Context())
		upload.Method = http.MethodPost
		upload.URL = &url.URL{Path: "/upload/storage/v1/b/" + bucket + "/o", RawQuery: query.Encode()}
		upload.RequestURI = upload.URL.RequestURI()
		recorded := httptest.NewRecorder()
		upstream.ServeHTTP(recorded, upload)
		answerLikeXMLAPI(w, recorded)
	})
}

func xmlUploadTarget(publicHost string, r *http.Request) (bucket, object string, ok bool) {
	if r.Method != http.MethodPut || r.Host != publicHost || r.URL.RawQuery != "" {
		return "", "", false
	}
	path := strings.TrimPrefix(r.URL.EscapedPath(), "/")
	for _, api := range []string{"storage/", "upload/", "_internal/", "batch/"} {
		if strings.HasPrefix(path, api) {
			return "", "", false
		}
	}
	escapedBucket, escapedObject, found := strings.Cut(path, "/")
	if !found || escapedBucket == "" || escapedObject == "" {
		return "", "", false
	}
	// object_store escapes every byte outside [A-Za-z0-9._~] in both, "/" and "-" included.
	bucket, bucketErr := url.PathUnescape(escapedBucket)
	object, objectErr := url.PathUnescape(escapedObject)
	return bucket, object, bucketErr == nil && objectErr == nil
}

func answerLikeXMLAPI(w http.ResponseWriter, recorded *httptest.ResponseRecorder) {
	switch recorded.Code {
	case http.StatusOK:
		var created struct {
			Md5Hash    string `json:"md5Hash"`
			Etag       string `json:"etag"`
			Generation string `json:"generation"`
		}
		if err := json.Unmarshal(recorded.Body.Bytes(), &created); err != nil {
			http.Error(w, "unreadable upstream upload response: "+err.Error(), http.StatusInternalServerError)
			return
		}
		etag := created.Etag
		if md5, err := base64.StdEncoding.DecodeString(created.Md5Hash); err == nil && len(md5) == 16 {
			etag = hex.EncodeToString(md5)
		}
		w.Header().Set("ETag", fmt.Sprintf("%q", etag))
		w.Header().Set("x-goog-generation", created.Generation)
		w.WriteHeader(http.StatusOK)
	case http.StatusPreconditionFailed:
		w.Header().Set("Content-Type", "application/xml; charset=UTF-8")
		w.WriteHeader(http.StatusPreconditionFailed)
		fmt.Fprint(w, "<?xml version='1.0' encoding='UTF-8'?><Error><Code>PreconditionFailed</Code>"+
			"<Message>At least one of the pre-conditions you specified did not hold.</Message></Error>")
	default:
		for name, values := range recorded.Header() {
			w.Header()[name] = values
		}
		w.WriteHeader(recorded.Code)
		_, _ = w.Write(recorded.Body.Bytes())
	}
}
