#!/usr/bin/env bash
# TLS through one proxy (README, "Measured"): lbnode (one node from BIN_DIR, --dataplane-threads 1),
# HAProxy (nbthread 1) and NGINX (worker_processes 1) terminating TLS with the same certificate (ECDSA
# P-256, made here by openssl) in front of the same demo backend (127.0.0.1:9001), measured interleaved:
#   handshakes  `openssl s_time -new` for DURATION seconds: full TLS 1.3 handshakes per second, one
#               at a time (each a new connection and a GET /)
#   h1          `h2load --h1 -t1 -c64 -n REQS`: HTTP/1.1 over TLS, keep-alive
#   h2          `h2load -t1 -c64 -m10 -n REQS`: HTTP/2 over TLS (ALPN h2)
# RUNS rounds (default 3), each measuring every proxy once per kind, in turn; then the median of each.
# Prints each run and one line per (proxy, kind):   median <proxy> <kind> <value>
# Bounded: RUNS × 3 proxies × (DURATION s + 2 × REQS requests), loopback only.
#
# usage: bench/tls.sh BIN_DIR        (BIN_DIR holds release builds of lbctl and lbnode)
# needs: openssl, h2load (nghttp2-client), haproxy, nginx (nginx-light), curl
set -euo pipefail
bin=$(cd "${1:?usage: bench/tls.sh BIN_DIR}" && pwd)
runs=${RUNS:-3}
reqs=${REQS:-50000}
duration=${DURATION:-5}
dir=$(mktemp -d /tmp/lbfleet-tls-bench.XXXXXX)
ip=127.0.0.11
node_port=8443
haproxy_port=8444
nginx_port=8445

cleanup() {
  for f in "$dir"/node-1.bench.pid "$dir"/haproxy.pid "$dir"/nginx.pid; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  "$bin/lbctl" local down --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" > "$dir/haproxy.pem"

"$bin/lbctl" local up --nodes 1 --backends 1 --dir "$dir" >/dev/null
if [ -f "$dir/lbctl.env" ]; then . "$dir/lbctl.env"; fi
restart_node1_single_thread "$dir" "$ip"
wait_for 30 "$bin/lbctl" status

cat > "$dir/tls.toml" <<EOF
[[pool]]
name = "demo"
policy = "round_robin"
[[pool.backend]]
addr = "127.0.0.1:9001"
[pool.health]
kind = "none"

[[listener]]
name = "tls"
protocol = "http"
port = $node_port
pool = "demo"
[listener.tls]
[[listener.tls.certificates]]
cert_file = "$dir/cert.pem"
key_file = "$dir/key.pem"
EOF
wait_for 30 "$bin/lbctl" apply -f "$dir/tls.toml"

cat > "$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  pidfile $dir/haproxy.pid
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend tls
  bind 127.0.0.1:$haproxy_port ssl crt $dir/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
  default_backend demo
backend demo
  http-reuse always
  server b1 127.0.0.1:9001
EOF
haproxy -D -f "$dir/haproxy.cfg"

cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/nginx-body;
  proxy_temp_path $dir/nginx-proxy;
  fastcgi_temp_path $dir/nginx-fastcgi;
  uwsgi_temp_path $dir/nginx-uwsgi;
  scgi_temp_path $dir/nginx-scgi;
  upstream demo { server 127.0.0.1:9001; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port ssl http2;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://demo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -c "$dir/nginx.conf" -p "$dir"

declare -A ports=([lbnode]="$ip:$node_port" [haproxy]="127.0.0.1:$haproxy_port" [nginx]="127.0.0.1:$nginx_port")
for p in lbnode haproxy nginx; do
  wait_for 30 curl -skf --resolve "bench.test:${ports[$p]##*:}:${ports[$p]%:*}" "https://bench.test:${ports[$p]##*:}/"
done

one() { # proxy kind -> value
  local target=${ports[$1]}
  case $2 in
    handshakes)
      openssl s_time -connect "$target" -new -time "$duration" -www / 2>/dev/null \
        | awk '/connections in .* real seconds/ {print $1 / $4; exit}' ;;
    h1)
      h2load --h1 -t1 -c64 -n "$reqs" "https://$target/" | awk '/^finished in/ {gsub(",", ""); print $4}' ;;
    h2)
      h2load -t1 -c64 -m10 -n "$reqs" "https://$target/" | awk '/^finished in/ {gsub(",", ""); print $4}' ;;
  esac
}

declare -A results
for i in $(seq 1 "$runs"); do
  for kind in handshakes h1 h2; do
    for p in lbnode haproxy nginx; do
      v=$(one "$p" "$kind")
      echo "run $i $p $kind $v"
      results[$p.$kind]+="$v "
    done
  done
done
for kind in handshakes h1 h2; do
  for p in lbnode haproxy nginx; do
    echo "median $p $kind $(tr ' ' '\n' <<<"${results[$p.$kind]}" | grep . | median)"
  done
done
