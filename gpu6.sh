#!/bin/bash
# H200: what the split-K sum costs on the small layers' split plans (diag 16 / 32 / 64 / 128 and combinations).
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -l 1 > $OUT/smi.txt &
DIAGS="0 16 32 64 96 128 160" timeout 250 python benchmarks/ws_diagnostics.py 4096x4096 6144x4096 14336x4096 -- 64 ws,64,128,64,4,6 ws,64,128,64,2,6 ws,64,128,64,1,6 --out $OUT/diag-split.json > $OUT/log.txt 2>&1
echo "rc $? at ${SECONDS}s" >> $OUT/log.txt
DIAGS="0 32 128 160" timeout $((560-SECONDS)) python benchmarks/ws_diagnostics.py 4096x4096 6144x4096 -- 128 ws,128,128,128,4,3 ws,128,128,128,2,3 ws,128,128,128,1,3 --out $OUT/diag-split128.json >> $OUT/log.txt 2>&1
echo "rc $? at ${SECONDS}s" >> $OUT/log.txt
