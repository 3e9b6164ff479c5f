#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (localhost), for `make test-slurm` and for
# trying launch/slurm_cpu.sbatch by hand. Run as root:
#
#   launch/slurm_local/setup.sh          # install if missing, configure, start, wait until idle
#   export SLURM_CONF=/var/tmp/jaxhybrid-slurm/slurm.conf     # (what it prints last)
#   sbatch launch/slurm_cpu.sbatch configs/gffn.py:smoke /tmp/run --config.model.width=4
#   launch/slurm_local/setup.sh down     # stop the daemons and delete the cluster's files
#
# Steps, none by hand: install munge and SLURM from the distribution's packages (apt-get,
# only when a command is missing); write a munge key; write slurm.conf from slurm.conf.in
# (one node "localhost" at 127.0.0.1 with max(2, nproc) CPUs, select/cons_tres,
# proctrack/linuxproc, task/none: no cgroups); start munged, slurmctld and slurmd; wait
# until `sinfo` shows the node idle. Running it again changes nothing when all is up
# (daemons are restarted only when the written config changed). Everything lives under
# JAXHYBRID_SLURM_DIR (default /var/tmp/jaxhybrid-slurm): its own munged socket and key,
# state, spool and logs, so the machine's /etc/slurm, /etc/munge and any running munged
# are left alone. Ports: JAXHYBRID_SLURMCTLD_PORT (6817), JAXHYBRID_SLURMD_PORT (6818).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons, for shells whose PATH lacks them
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${JAXHYBRID_SLURM_DIR:-/var/tmp/jaxhybrid-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
WAIT_S=${JAXHYBRID_SLURM_WAIT:-60}

die() { echo "error: $*" >&2; exit 1; }
say() { echo "slurm_local: $*"; }

running() {  # running PIDFILE NAME: the file holds the pid of a live NAME (not a reused pid)
  [[ -s "$1" ]] && [[ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" == "$2" ]]
}

stop() {  # stop PIDFILE NAME: SIGTERM, then wait up to 10 s
  local pid
  running "$1" "$2" || return 0
  pid=$(cat "$1")
  kill "$pid"
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { say "stopped $2"; return 0; }
    sleep 0.1
  done
  die "$2 (pid $pid) did not stop within 10 s after SIGTERM"
}

install_packages() {
  local missing=()
  command -v munged >/dev/null || missing+=(munge)
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  (( ${#missing[@]} )) || return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them;" \
    "install SLURM (slurmctld, slurmd, the client commands) and munge with this system's" \
    "package manager"
  say "installing ${missing[*]}"
  # no package index yet (a fresh machine), or a stale one: fetch it, then try again
  apt-cache show slurmd >/dev/null 2>&1 || apt-get update -q
  apt_install "${missing[@]}" || { apt-get update -q && apt_install "${missing[@]}"; }
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

write_config() {  # sets CHANGED=1 when slurm.conf or the munge key is new or different
  local cpus new
  mkdir -p "$DIR"/{state,spool,run,log}
  install -d -m 0700 "$DIR/munge"
  if [[ ! -s "$DIR/munge/munge.key" ]]; then
    (umask 077; head -c 1024 /dev/urandom > "$DIR/munge/munge.key")
    CHANGED=1
  fi
  cpus=$(nproc); (( cpus >= 2 )) || cpus=2
  new=$(sed -e "s|@DIR@|$DIR|g" -e "s|@CPUS@|$cpus|g" \
            -e "s|@CTLD_PORT@|${JAXHYBRID_SLURMCTLD_PORT:-6817}|g" \
            -e "s|@SLURMD_PORT@|${JAXHYBRID_SLURMD_PORT:-6818}|g" "$HERE/slurm.conf.in")
  if [[ ! -f "$CONF" || "$(cat "$CONF")" != "$new" ]]; then
    printf '%s\n' "$new" > "$CONF"
    CHANGED=1
  fi
}

start_daemons() {
  if (( CHANGED )); then  # a new key or config: the running daemons must not keep the old one
    stop "$DIR/run/slurmd.pid" slurmd
    stop "$DIR/run/slurmctld.pid" slurmctld
    stop "$DIR/run/munged.pid" munged
  fi
  if ! running "$DIR/run/munged.pid" munged; then
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
      --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
      --seed-file="$DIR/munge/munged.seed"
    say "started munged"
  fi
  if ! running "$DIR/run/slurmctld.pid" slurmctld; then
    slurmctld -f "$CONF"
    say "started slurmctld"
  fi
  if ! running "$DIR/run/slurmd.pid" slurmd; then
    slurmd -f "$CONF" -N localhost
    say "started slurmd"
  fi
}

wait_idle() {
  local state=""
  for _ in $(seq $((WAIT_S * 4))); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in
      idle|mixed|allocated|completing) say "node localhost is $state"; return 0 ;;
      down*|drain*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.25
  done
  tail -n 20 "$DIR"/log/*.log >&2 || true
  die "the node did not become idle within $WAIT_S s (sinfo says '${state:-nothing}');" \
    "logs above, in $DIR/log"
}

up() {
  [[ $(id -u) == 0 ]] || die "run as root: it installs packages and starts munged," \
    "slurmctld and slurmd"
  install_packages
  CHANGED=0
  write_config
  start_daemons
  wait_idle
  echo "export SLURM_CONF=$CONF"
}

down() {
  stop "$DIR/run/slurmd.pid" slurmd
  stop "$DIR/run/slurmctld.pid" slurmctld
  stop "$DIR/run/munged.pid" munged
  rm -rf "$DIR"
  say "removed $DIR"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "unknown command '$1'; give up (the default) or down" ;;
esac
