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
