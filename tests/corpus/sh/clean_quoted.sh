#!/bin/bash
set -euo pipefail
pattern="$1"
grep -r -- "$pattern" /var/log
