// goclient is a statically linked Go test client for mirrortrace.
//
// Go programs resolve names and open sockets with raw syscalls (no libc), so they are the
// case LD_PRELOAD tools miss and a ptrace supervisor must handle. Built with CGO_ENABLED=0,
// so the pure Go resolver (reading /etc/resolv.conf and /etc/hosts itself, falling back
// to TCP) is always used.
//
// Usage (errors go to stderr as "error: <Go error text>", exit status 1):
//
//	goclient get [-sha] URL     body on stdout; with -sha: "LEN SHA256HEX"
//	goclient lookup NAME        net.LookupHost: one address per line, sorted
//	goclient srv SERVICE PROTO NAME
//	                            net.LookupSRV: "TARGET PORT PRIORITY WEIGHT" lines
//	goclient hostname           os.Hostname on line 1, then its LookupHost addresses
//	goclient dial HOST:PORT     plain TCP connect: "connected REMOTEADDR"
//	goclient env                 the environment, sorted NAME=value lines
//	goclient stress N URL [ITERS]
//	                            N goroutines, each ITERS (default 10) times: LookupHost of
//	                            the URL's host + GET; prints "ok COUNT" (exit 1 if any failed)
//
// File modes, for checking that a static program sees remote files byte for byte (the Go
// runtime opens and stats files with raw syscalls, openat and newfstatat, never via libc):
//
//	goclient read PATH          os.ReadFile: "LEN SHA256HEX" (as get -sha)
//	goclient stat PATH          os.Stat: "SIZE PERM KIND", PERM the octal permission bits
//	                            (e.g. 644), KIND dir, file or other
//	goclient lstat PATH         os.Lstat: as stat, KIND also link
//	goclient ls DIR             os.ReadDir: "NAME KIND" lines sorted by name, KIND d, f, l or o
//	goclient write PATH TEXT    os.WriteFile(PATH, TEXT, 0644); prints nothing
//	goclient readlink PATH      os.Readlink: the target
//	goclient fstat PATH         open, then fstat the fd: "SIZE PERM UID"
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var client = &http.Client{Timeout: 60 * time.Second}

func init() {
	// Same as GODEBUG=netdns=go: never hand resolution to libc (there is none anyway).
	net.DefaultResolver = &net.Resolver{PreferGo: true}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "error: %v\n", err)
	os.Exit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: goclient get [-sha] URL | lookup NAME | srv SERVICE PROTO NAME | "+
		"hostname | dial HOST:PORT | env | stress N URL [ITERS] | read PATH | stat PATH | "+
		"lstat PATH | ls DIR | write PATH TEXT | readlink PATH | fstat PATH")
	os.Exit(2)
}

// kind names a file type for stat and lstat: dir, file, link or other.
func kind(mode fs.FileMode) string {
	switch {
	case mode.IsDir():
		return "dir"
	case mode.IsRegular():
		return "file"
	case mode&fs.ModeSymlink != 0:
		return "link"
	}
	return "other"
}

func printStat(info fs.FileInfo) {
	// Perm is the rwx bits only: Go keeps setuid, setgid and sticky in other mode bits.
	fmt.Printf("%d %o %s\n", info.Size(), info.Mode().Perm(), kind(info.Mode()))
}

func readFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	fmt.Printf("%d %s\n", len(data), hex.EncodeToString(sum[:]))
	return nil
}

func list(dir string) error {
	entries, err := os.ReadDir(dir) // already sorted by name
	if err != nil {
		return err
	}
	for _, e := range entries {
		k := "o"
		switch t := e.Type(); {
		case t.IsDir():
			k = "d"
		case t.IsRegular():
			k = "f"
		case t&fs.ModeSymlink != 0:
			k = "l"
		}
		fmt.Printf("%s %s\n", e.Name(), k)
	}
	return nil
}

func get(rawURL string, sha bool) error {
	resp, err := client.Get(rawURL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if sha {
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			return err
		}
		fmt.Printf("%d %s\n", n, hex.EncodeToString(h.Sum(nil)))
	} else if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}

func lookup(name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	sort.Strings(addrs)
	return addrs, err
}

func stress(n, iters int, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return err
	}
	// One connection per request: with keep-alives, net/http may hand a waiting request
	// an idle connection and cancel the dial it had started, DNS lookup included, and
	// that cancellation can fail a request that shared the lookup. This test is about
	// thousands of lookups and connects, so make every request do both.
	stressClient := &http.Client{
		Timeout:   60 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true},
	}
	var ok int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				_, err := lookup(u.Hostname())
				if err == nil {
					var resp *http.Response
					resp, err = stressClient.Get(rawURL)
					if err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != 200 {
							err = fmt.Errorf("HTTP status %s", resp.Status)
						}
					}
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					continue
				}
				atomic.AddInt64(&ok, 1)
			}
		}()
	}
	wg.Wait()
	fmt.Printf("ok %d\n", ok)
	return firstErr
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "get":
		sha := false
		if len(args) > 0 && args[0] == "-sha" {
			sha, args = true, args[1:]
		}
		if len(args) != 1 {
			usage()
		}
		if err := get(args[0], sha); err != nil {
			fail(err)
		}
	case "lookup":
		if len(args) != 1 {
			usage()
		}
		addrs, err := lookup(args[0])
		if err != nil {
			fail(err)
		}
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "srv":
		if len(args) != 3 {
			usage()
		}
		_, srvs, err := net.DefaultResolver.LookupSRV(context.Background(), args[0], args[1], args[2])
		if err != nil {
			fail(err)
		}
		for _, s := range srvs {
			fmt.Printf("%s %d %d %d\n", s.Target, s.Port, s.Priority, s.Weight)
		}
	case "env":
		// os.Environ comes from the stack execve built: no libc involved.
		vars := os.Environ()
		sort.Strings(vars)
		for _, v := range vars {
			fmt.Println(v)
		}
	case "hostname":
		name, err := os.Hostname()
		if err != nil {
			fail(err)
		}
		fmt.Println(name)
		addrs, err := lookup(name)
		if err != nil {
			fail(err)
		}
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "dial":
		if len(args) != 1 {
			usage()
		}
		conn, err := net.DialTimeout("tcp", args[0], 60*time.Second)
		if err != nil {
			fail(err)
		}
		fmt.Printf("connected %s\n", conn.RemoteAddr())
		conn.Close()
	case "stress":
		if len(args) < 2 || len(args) > 3 {
			usage()
		}
		n, err := strconv.Atoi(args[0])
		if err != nil {
			usage()
		}
		iters := 10
		if len(args) == 3 {
			if iters, err = strconv.Atoi(args[2]); err != nil {
				usage()
			}
		}
		if err := stress(n, iters, args[1]); err != nil {
			fail(err)
		}
	case "read":
		if len(args) != 1 {
			usage()
		}
		if err := readFile(args[0]); err != nil {
			fail(err)
		}
	case "stat", "lstat":
		if len(args) != 1 {
			usage()
		}
		stat := os.Stat
		if os.Args[1] == "lstat" {
			stat = os.Lstat
		}
		info, err := stat(args[0])
		if err != nil {
			fail(err)
		}
		printStat(info)
	case "ls":
		if len(args) != 1 {
			usage()
		}
		if err := list(args[0]); err != nil {
			fail(err)
		}
	case "write":
		if len(args) != 2 {
			usage()
		}
		if err := os.WriteFile(args[0], []byte(args[1]), 0o644); err != nil {
			fail(err)
		}
	case "readlink":
		if len(args) != 1 {
			usage()
		}
		target, err := os.Readlink(args[0])
		if err != nil {
			fail(err)
		}
		fmt.Println(target)
	case "fstat":
		if len(args) != 1 {
			usage()
		}
		f, err := os.Open(args[0])
		if err != nil {
			fail(err)
		}
		info, err := f.Stat() // fstat(2) on the open file, not a path lookup
		if err != nil {
			fail(err)
		}
		st := info.Sys().(*syscall.Stat_t)
		fmt.Printf("%d %o %d\n", info.Size(), info.Mode().Perm(), st.Uid)
	default:
		usage()
	}
}
