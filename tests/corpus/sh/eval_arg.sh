#!/bin/bash
# Runs a "report" named by the caller.
report="$1"
eval "generate_$report --out /tmp/report.txt"
