package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/server"
)

// adminTokenEnv names the environment variable the cluster commands read
// the admin token from when --token is not given.
const adminTokenEnv = "HOPWATCH_ADMIN_TOKEN"

const clusterUsage = `Usage:
  hopwatch cluster status [flags]                  members, leader and raft positions as a node sees them
  hopwatch cluster join --id ID --raft-address HOST:PORT --grpc-address HOST:PORT [flags]
                                                   add a node that waits to be added (--cluster.bootstrap=false)
  hopwatch cluster remove ID [flags]               take a member out (a dead node; stop and empty it first)
  hopwatch cluster leave [flags]                   the node at --url leaves for good; stop it afterwards

Each command calls the HTTP API of the node at --url (GET /api/v1/cluster,
/api/v1/admin/cluster/...); with --auth.enabled it needs an admin token
(--token, or $` + adminTokenEnv + `).

Flags:
`

// clusterClient calls one node's cluster API.
type clusterClient struct {
	base  string
	token string
	http  *http.Client
}

// runCluster runs hopwatch cluster <command>.
func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		fmt.Fprint(stdout, clusterUsage)
		newClusterFlags("x", io.Discard).fs.PrintDefaults()
		if len(args) == 0 {
			return errors.New("name a command: status, join, remove or leave")
		}
		return nil
	}
	cmd, args := args[0], args[1:]
	cf := newClusterFlags(cmd, stderr)
	var id, raftAddr, grpcAddr string
	if cmd == "join" {
		cf.fs.StringVar(&id, "id", "", "ID of the node to add (its --cluster.node-id).")
		cf.fs.StringVar(&raftAddr, "raft-address", "", "Raft address of the node to add (its --cluster.raft-advertise-address, else --cluster.raft-address).")
		cf.fs.StringVar(&grpcAddr, "grpc-address", "", "Internal gRPC address of the node to add (its --cluster.grpc-advertise-address, else --cluster.grpc-address).")
	}
	pos, err := parseInterspersed(cf.fs, args)
	if err != nil {
		return err
	}
	want := 0
	if cmd == "remove" {
		want = 1
	}
	switch cmd {
	case "status", "join", "remove", "leave":
	default:
		return fmt.Errorf("unknown command %q: use status, join, remove or leave (hopwatch cluster help)", cmd)
	}
	if len(pos) != want {
		if want == 1 {
			return errors.New("name the member to remove: hopwatch cluster remove ID")
		}
		return fmt.Errorf("unexpected arguments %q", pos)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cf.timeout)
	defer cancel()
	switch cmd {
	case "status":
		var st server.ClusterStatus
		if err := c.do(ctx, http.MethodGet, "/api/v1/cluster", nil, &st); err != nil {
			return err
		}
		printClusterStatus(stdout, st)
	case "join":
		if id == "" || raftAddr == "" {
			return errors.New("join needs --id and --raft-address (and --grpc-address, for the others to reach the node)")
		}
		body, _ := json.Marshal(server.ClusterJoinRequest{ID: id, RaftAddress: raftAddr, GRPCAddress: grpcAddr})
		var st server.ClusterStatus
		if err := c.do(ctx, http.MethodPost, "/api/v1/admin/cluster/members", body, &st); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s is a member.\n\n", id)
		printClusterStatus(stdout, st)
	case "remove":
		var st server.ClusterStatus
		if err := c.do(ctx, http.MethodDelete, "/api/v1/admin/cluster/members/"+url.PathEscape(pos[0]), nil, &st); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s is no longer a member: keep it stopped, and empty its storage.path/cluster before it joins again.\n\n", pos[0])
		printClusterStatus(stdout, st)
	case "leave":
		var res struct {
			NodeID  string `json:"node_id"`
			Message string `json:"message"`
		}
		if err := c.do(ctx, http.MethodPost, "/api/v1/admin/cluster/leave", nil, &res); err != nil {
			return err
		}
		fmt.Fprintln(stdout, res.Message)
	}
	return nil
}

// clusterFlags are the flags every cluster command takes.
type clusterFlags struct {
	fs                        *flag.FlagSet
	url, token                string
	caFile, certFile, keyFile string
	timeout                   time.Duration
}

func newClusterFlags(cmd string, stderr io.Writer) *clusterFlags {
	cf := &clusterFlags{fs: flag.NewFlagSet("hopwatch cluster "+cmd, flag.ContinueOnError)}
	cf.fs.SetOutput(stderr)
	cf.fs.StringVar(&cf.url, "url", "http://localhost:9800", "Base URL of a node's HTTP API (--web.listen-address); https with --tls.cert-file on the node.")
	cf.fs.StringVar(&cf.token, "token", "", "Admin token (one of the node's --auth.admin-token-file), needed with --auth.enabled. Default: $"+adminTokenEnv+".")
	cf.fs.StringVar(&cf.caFile, "tls.ca-file", "", "PEM CAs to verify the node's certificate with (default: the system's).")
	cf.fs.StringVar(&cf.certFile, "tls.cert-file", "", "PEM client certificate, for a node that requires one (--tls.require-client-cert).")
	cf.fs.StringVar(&cf.keyFile, "tls.key-file", "", "PEM private key of --tls.cert-file.")
	cf.fs.DurationVar(&cf.timeout, "timeout", 30*time.Second, "How long to wait for the answer.")
	return cf
}

func (cf *clusterFlags) client() (*clusterClient, error) {
	u, err := url.Parse(cf.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--url: %q is not an http:// or https:// URL", cf.url)
	}
	tok := cf.token
	if tok == "" {
		tok = os.Getenv(adminTokenEnv)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cf.caFile != "" || cf.certFile != "" || cf.keyFile != "" {
		tr.TLSClientConfig, err = auth.ClientConfig(cf.caFile, cf.certFile, cf.keyFile, "")
		if err != nil {
			return nil, err
		}
	}
	return &clusterClient{base: strings.TrimSuffix(u.String(), "/"), token: tok, http: &http.Client{Transport: tr}}, nil
}

// do sends a request and decodes the data of a successful answer into out.
// A refusal is an error with the node's reason.
func (c *clusterClient) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if json.Unmarshal(b, &env) != nil || env.Status == "" {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if env.Status != "success" {
		hint := ""
		switch resp.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			hint = " (give an admin token with --token or $" + adminTokenEnv + ")"
		case http.StatusServiceUnavailable:
			hint = " (no leader now; retry in a few seconds)"
		}
		return fmt.Errorf("%s: %s%s", resp.Status, env.Error, hint)
	}
	if err := json.Unmarshal(env.Data, out); err != nil {
		return fmt.Errorf("%s %s: the answer's data: %w", method, path, err)
	}
	return nil
}

// printClusterStatus prints a node's view of the cluster: a summary line,
// then a table of the members.
func printClusterStatus(w io.Writer, st server.ClusterStatus) {
	leader := st.LeaderID
	if leader == "" {
		leader = "none (election)"
	}
	readiness := "ready"
	if !st.Ready {
		readiness = "not ready (catching up)"
	}
	fmt.Fprintf(w, "seen from %s (%s, %s): leader %s, term %d, commit index %d, applied index %d\n\n",
		st.NodeID, st.RaftState, readiness, leader, st.Term, st.CommitIndex, st.AppliedIndex)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRAFT ADDRESS\tGRPC ADDRESS\tROLE\tSTATE\tVOTER\tLAST CONTACT")
	for _, m := range st.Members {
		contact := "-"
		if !m.LastContact.IsZero() {
			contact = st.Time.Sub(m.LastContact).Round(time.Millisecond).String() + " ago"
		}
		voter := "yes"
		if !m.Voter {
			voter = "no"
		}
		grpcAddr := m.GRPCAddress
		if grpcAddr == "" {
			grpcAddr = "-"
		}
		id := m.ID
		if m.ID == st.NodeID {
			id += " *"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, m.RaftAddress, grpcAddr, m.Role, m.State, voter, contact)
	}
	_ = tw.Flush()
}

// parseInterspersed parses flags that may come before or after the
// positional arguments (hopwatch cluster remove n3 --url ...), and returns
// the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
