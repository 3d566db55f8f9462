# Shared by the bench scripts (sourced): waits and medians.

# Poll a command until it succeeds, at most $1 seconds.
wait_for() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out after ${limit}s waiting for: $*" >&2; return 1; fi
    sleep 0.2
  done
}

# The median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Restart node 1 of the local cluster in $1 (started by `lbctl local up --dir $1`) with one data-plane
# thread, same arguments otherwise; its pid goes to $1/node-1.bench.pid, its log to $1/node-1.bench.log.
# Waits until its admin port on $2 answers.
restart_node1_single_thread() {
  local dir=$1 ip=$2 pid args
  pid=$(cat "$dir/node-1.pid")
  mapfile -d '' args < "/proc/$pid/cmdline"
  kill "$pid"
  wait_for 20 bash -c "! kill -0 $pid"
  # LBNODE_ARGS: more lbnode flags for the bench (e.g. --upstream-idle-per-backend 64), split on spaces.
  # shellcheck disable=SC2086
  "${args[@]}" --dataplane-threads 1 ${LBNODE_ARGS:-} >>"$dir/node-1.bench.log" 2>&1 &
  echo $! > "$dir/node-1.bench.pid"
  wait_for 30 curl -sf "http://$ip:7401/healthz"
}
