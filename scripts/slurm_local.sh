#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munge + slurmctld + slurmd on localhost), for the
# integration test of `hydra/launcher=slurm` (tests/reliability/test_slurm.py, `make test-slurm`).
# Needs root and Debian's apt (slurm-wlm). Leaves a cluster that already answers `sinfo` alone.
set -euo pipefail

if command -v sinfo >/dev/null && sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
  echo "slurm: a cluster is already up"; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm: a local cluster needs root (apt-get install slurm-wlm, daemons); run as root" >&2; exit 1
fi
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null; }
command -v slurmctld >/dev/null || install || { apt-get update -qq && install; } ||
  { echo "slurm: apt-get could not install slurm-wlm" >&2; exit 1; }

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
state=/var/spool/slurmctld-peftbench   # its own state: another cluster's files stop slurmctld
mkdir -p /etc/slurm /var/spool/slurmd "$state" /run/munge /var/log
# Process tracking without cgroups and no accounting daemon: enough for one node in a container.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=peftbench-local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=${state}
SlurmctldLogFile=/var/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
logs="see /var/log/slurmctld.log and /var/log/slurmd.log"
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged || { echo "slurm: munged did not start" >&2; exit 1; }
pgrep -x slurmctld >/dev/null || slurmctld || { echo "slurm: slurmctld did not start; $logs" >&2; exit 1; }
pgrep -x slurmd >/dev/null || slurmd || { echo "slurm: slurmd did not start; $logs" >&2; exit 1; }
for _ in $(seq 30); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "slurm: one-node cluster up (${host}, ${cpus} CPUs, ${mem_mb} MB)"; exit 0
  fi
  sleep 1
done
echo "slurm: the local cluster did not come up; $logs" >&2
exit 1
