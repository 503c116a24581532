#!/bin/sh
pattern="$1"
sh -c "grep -r $pattern /var/log"
