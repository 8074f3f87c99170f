#!/usr/bin/env bash
# Share the machine with a running quality (or conditional) benchmark without touching what it measures.
#   bash benchmarks/hold.sh hold     # waits until no training run is going (the benchmark is
#                                    # scoring), then freezes the benchmark's parent process
#   bash benchmarks/hold.sh release  # lets it go on
# Training wall time is what the benchmark compares; only scoring waits while held, so tests
# or other CPU work can run in between without biasing a row.
set -u
parent() { pgrep -f "python -m benchmarks[.](quality|conditional)" | head -1; }
child() { pgrep -f "lightning_faces fit" | head -1; }
case "${1:-}" in
hold)
    while true; do
        p=$(parent)
        [ -z "$p" ] && { echo "no quality benchmark is running"; exit 0; }
        if [ -z "$(child)" ]; then
            kill -STOP "$p"
            if [ -z "$(child)" ]; then echo "held $p at $(date +%T)"; exit 0; fi
            kill -CONT "$p"  # a training run started in between: let it go and wait
        fi
        sleep 5
    done ;;
release)
    p=$(parent)
    [ -n "$p" ] && kill -CONT "$p" && echo "released $p at $(date +%T)" ;;
*)
    echo "usage: bash benchmarks/hold.sh hold|release" >&2; exit 2 ;;
esac
