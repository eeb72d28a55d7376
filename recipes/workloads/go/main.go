// A serverless-style function using Go's standard library broadly, for
// tracing the slim Go image (recipes/go.yaml slim.workload): files, JSON, an
// HTTP server and client on loopback, hashing, TLS primitives (a self-signed
// certificate served over TLS), compression, a subprocess, goroutines.
package main

import (
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

type request struct {
	Numbers []int `json:"numbers"`
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func handler(w http.ResponseWriter, r *http.Request) {
	var body request
	must(json.NewDecoder(r.Body).Decode(&body))
	sum := 0
	for _, n := range body.Numbers {
		sum += n
	}
	json.NewEncoder(w).Encode(map[string]int{"sum": sum})
}

func call(client *http.Client, url string) {
	payload, _ := json.Marshal(request{Numbers: []int{1, 2, 3}})
	response, err := client.Post(url, "application/json", bytes.NewReader(payload))
	must(err)
	defer response.Body.Close()
	var reply map[string]int
	must(json.NewDecoder(response.Body).Decode(&reply))
	if reply["sum"] != 6 {
		must(fmt.Errorf("sum %d", reply["sum"]))
	}
}

func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	template := x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	must(err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func main() {
	plain := httptest.NewServer(http.HandlerFunc(handler))
	call(plain.Client(), plain.URL)
	plain.Close()

	secure := httptest.NewUnstartedServer(http.HandlerFunc(handler))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
	secure.StartTLS()
	call(secure.Client(), secure.URL)
	secure.Close()

	dir, err := os.MkdirTemp("", "service")
	must(err)
	defer os.RemoveAll(dir)
	var compressed bytes.Buffer
	writer := gzip.NewWriter(&compressed)
	writer.Write(bytes.Repeat([]byte("x"), 1000))
	writer.Close()
	must(os.WriteFile(filepath.Join(dir, "data.gz"), compressed.Bytes(), 0o644))
	file, err := os.Open(filepath.Join(dir, "data.gz"))
	must(err)
	reader, err := gzip.NewReader(file)
	must(err)
	data, err := io.ReadAll(reader)
	must(err)

	mac := hmac.New(sha256.New, []byte("key"))
	mac.Write(data)
	digest := sha256.Sum256(data)

	output, err := exec.Command("/bin/sh", "-c", "echo subprocess").Output()
	must(err)

	var group sync.WaitGroup
	results := make([]int, 8)
	for i := range results {
		group.Add(1)
		go func(i int) { defer group.Done(); results[i] = i * i }(i)
	}
	group.Wait()
	fmt.Printf("service workload ok %x %x %s", digest[:4], mac.Sum(nil)[:4], output)
}
