#!/usr/bin/env bash
# Runs fuzz targets one after another, each for MINUTES, one process (the machine is shared):
#   fuzz/run.sh MINUTES TARGET...     (all targets when none is named)
# Each run's corpus is corpus/TARGET (seeded from seeds/TARGET); findings land in
# artifacts/TARGET/. A summary line per run (executions, seconds, finding) goes to runs.log.
set -uo pipefail
cd "$(dirname "$0")"
minutes=${1:?usage: run.sh MINUTES [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=($(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v basic-fuzz))
fi
bin=target/x86_64-unknown-linux-gnu/release
declare -A max_len=([webdataset]=65536 [image]=65536 [tokenizer]=65536 [safetensors]=16384
                    [stablehlo]=16384 [executable]=16384 [interop]=16384)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" logs
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log="logs/$t-$(date +%Y%m%d-%H%M%S).log"
  start=$(date +%s)
  nice -n 10 "$bin/$t" "corpus/$t" -artifact_prefix="artifacts/$t/" \
    -max_total_time=$((minutes * 60)) -timeout=10 -rss_limit_mb=2048 \
    -max_len="${max_len[$t]:-8192}" -print_final_stats=1 > "$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  finding=$(grep -a -m1 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY" "$log" | cut -c1-200)
  echo "$(date -Is) $t rc=$rc seconds=$secs execs=${execs:-?} corpus=$(ls "corpus/$t" | wc -l) ${finding:+finding: $finding} log=$log" | tee -a runs.log
done
