#!/usr/bin/env bash
# Real dynamic programs natively, under the interpreter and on the KVM backend, side by side:
# the benchmark guests (benches/run.sh) are static binaries with one hot loop each and hide
# what real programs do on kvm (system calls, clock reads, hot library code whose undefined
# flags leave the VM). Programs are named by absolute path (a `PATH` shim may be a script
# that fx86 cannot run as a program). Prints medians of RUNS wall times and, from one `--stats` run on kvm,
# the share of instructions interpreted, bursts, exits and waits for replays (the exact icount
# mid-run: clock reads). Programs missing here are skipped.
#   usage: benches/real.sh [RUNS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release -q
FX86=$PWD/target/release/fx86
KVM=$( [ -r /dev/kvm ] && [ -w /dev/kvm ] && echo yes || true)
cd /tmp
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
time_of() { # command... -> median wall seconds
  local ts=()
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(now); env -u _ "$@" </dev/null >/dev/null 2>&1 || true; t1=$(now)
    ts+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf "%s\n" "${ts[@]}" | median
}
# bc reads its program from a file, then stdin (empty) after computing.
echo 'scale=400; 4*a(1)' > fx86-bench-pi.bc
PROGS=(
  "/usr/bin/objdump -d /usr/bin/bc"
  "/usr/bin/perl -e 'my %h; for my \$i (1..300000) { \$h{\$i*7 % 1013} += \$i } print scalar(keys %h), qq(\\n)'"
  "/usr/bin/python3.11 -S -c 'd = {}
for i in range(50000): d[str(i)] = i
print(sum(d.values()))'"
  "/usr/bin/sqlite3 :memory: 'with recursive c(x) as (select 1 union all select x+1 from c where x<50000) select count(*), sum(x*x%97) from c;'"
  "/bin/gzip -c /usr/bin/cmp"
  "/usr/bin/xz -c /etc/services"
  "/usr/bin/sha256sum /usr/bin/gdb"
  "/usr/bin/readelf -h -S /usr/bin/gdb"
  "/usr/bin/bc -l fx86-bench-pi.bc"
)
printf "%-28s %9s %9s %9s %10s %10s %8s %7s %7s %7s\n" program native_s interp_s kvm_s kvm/native kvm/interp interp% bursts exits waits
for p in "${PROGS[@]}"; do
  eval "set -- $p"
  cmd=$1
  [ -x "$cmd" ] || continue
  shift
  label=$(echo "$(basename "$cmd") $*" | tr '\n' ' ')
  n=$(time_of "$cmd" "$@")
  i=$(time_of "$FX86" run -- "$cmd" "$@")
  if [ -n "$KVM" ]; then
    k=$(time_of "$FX86" run --backend kvm -- "$cmd" "$@")
    st=$(env -u _ "$FX86" run --backend kvm --stats -- "$cmd" "$@" 2>&1 </dev/null >/dev/null | tail -1)
    field() { echo "$st" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
    share=$(echo "100 * $(field interpreted_insns) / $(echo "$st" | sed -n 's/.*icount=\([0-9]*\).*/\1/p')" | bc -l)
    exits=$(( $(field syscalls) + $(field exceptions) + $(field emulated) + $(field interpreted) + $(field kicks) ))
    printf "%-28.28s %9.3f %9.3f %9.3f %10.3f %10.3f %8.1f %7s %7s %7s\n" "$label" "$n" "$i" "$k" \
      "$(echo "$n / $k" | bc -l)" "$(echo "$i / $k" | bc -l)" "$share" "$(field bursts)" "$exits" \
      "$(field waits)"
  else
    printf "%-28.28s %9.3f %9.3f\n" "$label" "$n" "$i"
  fi
done
