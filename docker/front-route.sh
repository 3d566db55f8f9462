#!/usr/bin/env bash
# Make this host reach the compose front's VIP through the router container, or undo it.
#   docker/front-route.sh add     route 172.28.1.1/32 via 172.28.0.2 (the compose service `router`)
#   docker/front-route.sh del     remove that route
# Needs root (ip route). Prints what it changed.
set -euo pipefail
vip="${FRONT_VIP:-172.28.1.1}"
router="${FRONT_ROUTER:-172.28.0.2}"
case "${1:-}" in
  add)
    ip route replace "$vip/32" via "$router"
    echo "added: $(ip route show "$vip/32")"
    ;;
  del)
    if ip route show "$vip/32" | grep -q .; then
      ip route del "$vip/32"
      echo "removed the route to $vip/32"
    else
      echo "no route to $vip/32 to remove"
    fi
    ;;
  *)
    echo "usage: $0 add|del" >&2
    exit 2
    ;;
esac
