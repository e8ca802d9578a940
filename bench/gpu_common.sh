# Shared by bench/gpu_suite.sh and bench/gpu_quick.sh (sourced): timed logging and time-limited steps.
# Needs OUT, LOG, DEADLINE (seconds from the start) and RESERVE (seconds kept back at the end).
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$LOG"; }
# step NAME LIMIT CMD...: run with a limit, never past DEADLINE - RESERVE; one failing step does not stop the script
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( DEADLINE - RESERVE - $(elapsed) ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then log "== $name skipped: deadline"; return 1; fi
  log "== $name (limit ${limit}s): $*"
  timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  log "== $name rc=$rc"
  return $rc
}
