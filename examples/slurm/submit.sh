#!/usr/bin/env bash
# Submits a whole miwv selection to Slurm as four dependent jobs: an embedding array, the
# neighbour job, a scoring array and the merge. Prints the four job ids.
#
# usage: examples/slurm/submit.sh DATA RUN [options] [-- select flags]
#   --embed-shards N    embedding array size (default 4)
#   --score-shards M    scoring array size (default 8)
#   --at-once K         array elements running at once (default: all)
#   --sbatch "ARGS"     extra sbatch options for every job, e.g. "--partition=gpu --gres=gpu:1"
# Flags after -- are miwv select's (model, template, context sizes, ratio, ...), e.g.
#   examples/slurm/submit.sh data.jsonl /shared/runs/a --score-shards 16 -- -m /shared/m.gguf -ngl 999
# RUN must be on a filesystem every node sees; MIWV names the binary (default: miwv on PATH).
# Each job logs to RUN/slurm/<job name>-<job id>[_<index>].log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
data=$(realpath "$1")
run=$(realpath -m "$2")
shift 2
embed_shards=4
score_shards=8
at_once=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --embed-shards) embed_shards=$2; shift 2 ;;
        --score-shards) score_shards=$2; shift 2 ;;
        --at-once) at_once="%$2"; shift 2 ;;
        --sbatch) read -r -a extra <<< "$2"; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
flags=("$@")
miwv=$(command -v "${MIWV:-miwv}") || { echo "submit.sh: no miwv binary (set MIWV)" >&2; exit 1; }

mkdir -p "$run/slurm"
# Jobs start where submit.sh was run, so relative paths in the flags mean what they mean here.
common=(--parsable --chdir="$PWD" "${extra[@]}")
array_log=--output="$run/slurm/%x-%A_%a.log"
job_log=--output="$run/slurm/%x-%j.log"
export MIWV="$miwv" DATA="$data" RUN="$run"
# afterok waits for a whole array; --kill-on-invalid-dep cancels the rest of the chain when a
# shard fails, instead of leaving it pending forever.
after() { echo --dependency=afterok:"$1" --kill-on-invalid-dep=yes; }

embed=$(sbatch "${common[@]}" "$array_log" --export=ALL,SHARDS="$embed_shards" \
    --array="0-$((embed_shards - 1))$at_once" "$here/embed.sbatch" "${flags[@]}")
neighbours=$(sbatch "${common[@]}" "$job_log" $(after "$embed") "$here/neighbours.sbatch")
score=$(sbatch "${common[@]}" "$array_log" --export=ALL,SHARDS="$score_shards" \
    $(after "$neighbours") --array="0-$((score_shards - 1))$at_once" "$here/score.sbatch")
merge=$(sbatch "${common[@]}" "$job_log" $(after "$score") "$here/merge.sbatch")
echo "$embed $neighbours $score $merge"
