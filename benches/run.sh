#!/usr/bin/env bash
# fx86 speed benchmark: CPU-bound guests natively, under fx86 and under qemu-x86_64, side by
# side in one run. Prints instructions per second (icount from fx86, which counts exactly),
# medians of N runs, and the ratios fx86/qemu and fx86/native; with /dev/kvm also the time of
# `fx86 run --backend kvm` (native execution, snapshots at syscalls and kicks) and its ratio to
# native, and the time of the same run made exact (`--stats` settles every native stretch by
# replaying it in the interpreter, on all cores) against the interpreter's, and from that run
# what limits the kvm figure: exits to fx86 (syscalls, exceptions, instructions executed for the
# VM in place, interpreted pages, kicks) and the share of instructions interpreted; last, the
# native time with glibc held to the model's ISA (natisa_s, see MODEL_ISA) and kvm's ratio to it.
# Last, kvm's forward speed once running (the rate at two sizes) apart from its start-up cost.
#   usage: benches/run.sh [RUNS]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
cargo build --release -q
FX86=target/release/fx86
OUT=target/bench-guests
mkdir -p "$OUT"
for src in benches/guests/*.c; do
  b=$(basename "$src" .c)
  [ "$OUT/$b" -nt "$src" ] || gcc -static -O2 -o "$OUT/$b" "$src"
done
QEMU=$(command -v qemu-x86_64 || true)
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
KVM=$( [ -r /dev/kvm ] && [ -w /dev/kvm ] && echo yes || true)
# The same binaries natively with glibc held to the ISA fx86's CPU model offers (SSE2, POPCNT,
# CX16): the instruction stream fx86 runs (glibc otherwise picks AVX2/AVX-512 string functions
# natively). Shown beside the plain native time; the issue's targets use the plain one.
MODEL_ISA="glibc.cpu.hwcaps=-AVX512F,-AVX512BW,-AVX512VL,-AVX512DQ,-AVX512CD,-AVX2,-AVX,-FMA,-F16C,-SSE4_2,-SSE4_1,-SSSE3,-SSE3,-BMI1,-BMI2,-LZCNT,-MOVBE,-ERMS,-FSRM"

printf "%-10s %14s %10s %10s %10s %9s %9s %10s %10s %9s %10s %10s %10s %10s %8s %10s %10s\n" guest icount native_s fx86_s qemu_s fx86_MIPS qemu_MIPS fx86/qemu fx86/native kvm_s kvm/native kvmexact_s kvmx/interp kvm_exits interp% natisa_s kvm/natisa
RQ=(); RK=(); RM=()
for bin in "$OUT"/*; do
  b=$(basename "$bin")
  icount=$($FX86 run --stats -- "$bin" 2>&1 >/dev/null | tail -1 | sed -n 's/.*icount=\([0-9]*\).*/\1/p')
  nat=(); emu=(); qem=(); kvm=(); kvx=(); nmi=()
  for _ in $(seq "$RUNS"); do
    t0=$(now); "$bin" >/dev/null; t1=$(now); nat+=("$(echo "$t1 - $t0" | bc -l)")
    t0=$(now); GLIBC_TUNABLES=$MODEL_ISA "$bin" >/dev/null; t1=$(now); nmi+=("$(echo "$t1 - $t0" | bc -l)")
    t0=$(now); $FX86 run -- "$bin" >/dev/null; t1=$(now); emu+=("$(echo "$t1 - $t0" | bc -l)")
    if [ -n "$QEMU" ]; then t0=$(now); "$QEMU" "$bin" >/dev/null; t1=$(now); qem+=("$(echo "$t1 - $t0" | bc -l)"); fi
    if [ -n "$KVM" ]; then t0=$(now); $FX86 run --backend kvm -- "$bin" >/dev/null; t1=$(now); kvm+=("$(echo "$t1 - $t0" | bc -l)"); fi
    if [ -n "$KVM" ]; then t0=$(now); $FX86 run --backend kvm --stats -- "$bin" >/dev/null 2>"$OUT/../kvm-stats"; t1=$(now); kvx+=("$(echo "$t1 - $t0" | bc -l)"); fi
  done
  n=$(printf "%s\n" "${nat[@]}" | median); e=$(printf "%s\n" "${emu[@]}" | median)
  nm=$(printf "%s\n" "${nmi[@]}" | median)
  q=$( [ -n "$QEMU" ] && printf "%s\n" "${qem[@]}" | median || echo 0)
  fm=$(echo "$icount / $e / 1000000" | bc -l); qm=$( [ "$q" != 0 ] && echo "$icount / $q / 1000000" | bc -l || echo 0)
  rq=$( [ "$q" != 0 ] && echo "$q / $e" | bc -l || echo 0); rn=$(echo "$n / $e" | bc -l)
  k=$( [ -n "$KVM" ] && printf "%s\n" "${kvm[@]}" | median || echo 0)
  rk=$( [ "$k" != 0 ] && echo "$n / $k" | bc -l || echo 0)
  rm=$( [ "$k" != 0 ] && echo "$nm / $k" | bc -l || echo 0)
  kx=$( [ -n "$KVM" ] && printf "%s\n" "${kvx[@]}" | median || echo 0)
  rx=$( [ "$kx" != 0 ] && echo "$kx / $e" | bc -l || echo 0)
  exits=0; ishare=0
  if [ -n "$KVM" ]; then
    st=$(tail -1 "$OUT/../kvm-stats")
    field() { echo "$st" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
    exits=$(( $(field syscalls) + $(field exceptions) + $(field emulated) + $(field interpreted) + $(field kicks) ))
    ishare=$(echo "100 * $(field interpreted_insns) / $icount" | bc -l)
  fi
  printf "%-10s %14d %10.3f %10.3f %10.3f %9.1f %9.1f %10.3f %10.4f %9.3f %10.3f %10.3f %10.3f %10d %8.3f %10.3f %10.3f\n" "$b" "$icount" "$n" "$e" "$q" "$fm" "$qm" "$rq" "$rn" "$k" "$rk" "$kx" "$rx" "$exits" "$ishare" "$nm" "$rm"
  RQ+=("$rq"); RK+=("$rk"); RM+=("$rm")
done
# Geometric means of the ratios over the guests (the issues' targets are stated so).
geomean() { printf "%s\n" "$@" | awk '$1 > 0 {s += log($1); n++} END {if (n) printf "%.3f", exp(s / n); else printf "n/a"}'; }
printf "\ngeomean fx86/qemu %s" "$(geomean "${RQ[@]}")"
[ -n "$KVM" ] && printf ", kvm/native %s (kvm/native at the model's ISA %s)" "$(geomean "${RK[@]}")" "$(geomean "${RM[@]}")"
printf "\n"
# Exit cost: a system call round trip (guest -> fx86's Linux layer -> guest), from the time of
# N getppid() calls minus the time of none, per call; on kvm with every call leaving the VM,
# then as a user gets it (frequent syscalls are interpreted in bursts).
if [ -n "$KVM" ]; then
  gcc -static -O2 -o "$OUT/../exit-syscalls" benches/exits/syscalls.c
  N=20000
  per_call() { # command...
    local full=() none=()
    for _ in $(seq "$RUNS"); do
      t0=$(now); "$@" "$N" >/dev/null; t1=$(now); full+=("$(echo "$t1 - $t0" | bc -l)")
      t0=$(now); "$@" 0 >/dev/null; t1=$(now); none+=("$(echo "$t1 - $t0" | bc -l)")
    done
    local f z; f=$(printf "%s\n" "${full[@]}" | median); z=$(printf "%s\n" "${none[@]}" | median)
    echo "($f - $z) / $N * 1000000" | bc -l
  }
  printf "\n%-28s %12s\n" "syscall round trip" "microseconds"
  printf "%-28s %12.2f\n" native "$(per_call "$OUT/../exit-syscalls")"
  printf "%-28s %12.2f\n" "fx86 --backend interp" "$(per_call $FX86 run -- "$OUT/../exit-syscalls")"
  # (--no-bursts: every call leaves the VM; by default a loop this dense is interpreted in bursts.)
  printf "%-28s %12.2f\n" "fx86 --backend kvm" "$(per_call $FX86 run --backend kvm --no-bursts -- "$OUT/../exit-syscalls")"
  printf "%-28s %12.2f\n" "  the same, bursts allowed" "$(per_call $FX86 run --backend kvm -- "$OUT/../exit-syscalls")"
fi
# Forward speed on kvm once running: each guest natively and on kvm at its default size and at
# a size that adds a few tenths of a second of native work, and the ratio of the differences. The whole-run ratio above also
# counts what a run costs kvm before and after the guest's own work (making the VM, loading,
# the first instructions interpreted, copying back and tearing down: milliseconds, which
# dominate the guests that take a few milliseconds natively); extra_ms shows that cost at both
# sizes. heap's larger size adds rounds, not memory: 2000 of them, as its start-up (filling
# 1 GiB of fresh memory) varies by tenths of a second between runs on a shared host. (A
# difference lost in the host's noise shows as a negative ratio; the geometric mean is then
# not given.)
if [ -n "$KVM" ]; then
  declare -A BIG=([bytecode]=12000000 [hash]=160 [heap]=2020 [matrix]=500 [sort]=1600000 [strfn]=60000)
  printf "\n%-10s %10s %10s %10s %10s %12s %10s %10s\n" guest native_s nativeB_s kvm_s kvmB_s fwd_kvm/nat extra_ms extraB_ms
  RF=()
  for bin in "$OUT"/*; do
    b=$(basename "$bin"); big=${BIG[$b]:-}
    [ -n "$big" ] || continue
    n1=(); n4=(); k1=(); k4=()
    for _ in $(seq "$RUNS"); do
      t0=$(now); "$bin" >/dev/null; t1=$(now); n1+=("$(echo "$t1 - $t0" | bc -l)")
      t0=$(now); $FX86 run --backend kvm -- "$bin" >/dev/null; t1=$(now); k1+=("$(echo "$t1 - $t0" | bc -l)")
      t0=$(now); "$bin" "$big" >/dev/null; t1=$(now); n4+=("$(echo "$t1 - $t0" | bc -l)")
      t0=$(now); $FX86 run --backend kvm -- "$bin" "$big" >/dev/null; t1=$(now); k4+=("$(echo "$t1 - $t0" | bc -l)")
    done
    a=$(printf "%s\n" "${n1[@]}" | median); c=$(printf "%s\n" "${n4[@]}" | median)
    k=$(printf "%s\n" "${k1[@]}" | median); d=$(printf "%s\n" "${k4[@]}" | median)
    rf=$(echo "($c - $a) / ($d - $k)" | bc -l)
    printf "%-10s %10.3f %10.3f %10.3f %10.3f %12.3f %10.1f %10.1f\n" "$b" "$a" "$c" "$k" "$d" "$rf" \
      "$(echo "($k - $a) * 1000" | bc -l)" "$(echo "($d - $c) * 1000" | bc -l)"
    RF+=("$rf")
  done
  if printf "%s\n" "${RF[@]}" | awk '$1 <= 0 {bad = 1} END {exit !bad}'; then
    printf "\ngeomean forward kvm/native n/a (a difference was lost in noise: run again)\n"
  else
    printf "\ngeomean forward kvm/native %s\n" "$(geomean "${RF[@]}")"
  fi
fi
