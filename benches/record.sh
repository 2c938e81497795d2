#!/usr/bin/env bash
# Recording cost: `fx86 record` vs `fx86 run` on guests that read a few MB of input (a file and
# stdin), side by side in one run; medians of N runs. Prints the overhead, the recording's
# size, the part of it that is input, and the size per 10^9 instructions.
#   usage: benches/record.sh [RUNS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
cargo build --release -q
FX86=$PWD/target/release/fx86
W=target/bench-record
mkdir -p "$W"
cd "$W"
gcc -static -O2 -o digest ../../tests/guests/digest.c
# 4 MB of text-like input in a file and 2 MB on stdin.
python3 - <<'PY'
import random
r = random.Random(1)
words = [''.join(r.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(r.randint(2, 9))) for _ in range(5000)]
def text(n):
    out, size = [], 0
    while size < n:
        line = ' '.join(r.choice(words) for _ in range(r.randint(3, 12))) + '\n'
        out.append(line); size += len(line)
    return ''.join(out)
open('input.txt', 'w').write(text(4 << 20))
open('stdin.txt', 'w').write(text(2 << 20))
PY
cp /bin/busybox busybox
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
bench() {
  local name=$1; shift
  local run=() rec=()
  for _ in $(seq "$RUNS"); do
    t0=$(now); $FX86 run -- "$@" <stdin.txt >/dev/null 2>&1 || true; t1=$(now); run+=("$(echo "$t1 - $t0" | bc -l)")
    t0=$(now); $FX86 record -o "$name.fxr" -- "$@" <stdin.txt >/dev/null 2>&1 || true; t1=$(now); rec+=("$(echo "$t1 - $t0" | bc -l)")
  done
  local r=$(printf "%s\n" "${run[@]}" | median) c=$(printf "%s\n" "${rec[@]}" | median)
  local icount=$($FX86 info "$name.fxr" | awk '/^icount/ {print $2}')
  local size=$(stat -c %s "$name.fxr")
  local prog=$(stat -c %s "$1")
  local input=$($FX86 info "$name.fxr" | awk '/^files/ {gsub(/[(]/,"",$3); print $3}')
  local stdin=$($FX86 info "$name.fxr" | awk '/^stdin/ {print $2}')
  printf "%-16s %12d %8.3f %8.3f %+8.1f%% %10d %10d %10d %12.1f\n" "$name" "$icount" "$r" "$c" \
    "$(echo "($c / $r - 1) * 100" | bc -l)" "$size" "$input" "$stdin" \
    "$(echo "$size / ($icount / 1000000000) / 1048576" | bc -l)"
  $FX86 verify "$name.fxr" >/dev/null || echo "  ($name: verify FAILED)"
}
printf "%-16s %12s %8s %8s %9s %10s %10s %10s %12s\n" guest icount run_s record_s overhead file_bytes input_B stdin_B MiB/1e9insn
bench digest ./digest input.txt . 
bench sha256sum ./busybox sha256sum input.txt
bench sort ./busybox sort
bench wc ./busybox wc input.txt -
