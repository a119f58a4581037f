#!/usr/bin/env bash
# OpenNMT-py 3.5.1 on the same data, subword model, architecture and wall-clock budget as an l2fast
# run, for a side-by-side test BLEU. Training is cut off by `timeout` (OpenNMT-py has no wall-clock
# limit); the newest checkpoint translates the test set with beam 5; sacrebleu scores the
# detokenized output against the raw references, as l2fast does.
#
#   bash bench/opennmt_side_by_side.sh DATA_PREFIX_DIR SPM_MODEL MINUTES WORK_DIR
#   e.g. bash bench/opennmt_side_by_side.sh data/l10n runs/small/tokenizer/joint.model 20 runs/opennmt
#
# DATA_PREFIX_DIR holds train30k.{de,en}, valid.{de,en}, test.{de,en} (scripts/l10n_corpus.py).
# OpenNMT-py 3.5.1 pins torch<2.3; it is installed without dependencies beside torch 2.13.0 (CPU) in
# its own venv, with the packages it imports, and runs unchanged on that torch.
set -euo pipefail
data=$(realpath "$1"); spm=$(realpath "$2"); minutes=$3; work=$4
mkdir -p "$work"; work=$(realpath "$work")
venv="$work/venv"
if [ ! -x "$venv/bin/onmt_train" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0
    "$venv/bin/pip" install -q --no-deps OpenNMT-py==3.5.1
    "$venv/bin/pip" install -q configargparse pyonmttok pyyaml sacrebleu sentencepiece six future pillow numpy \
        rapidfuzz pyahocorasick packaging spacy fasttext-wheel
fi
cp "$spm" "$work/spm.model"
# The same model and recipe as the l2fast run it is compared with (configs/small.json with
# --dropout 0.1 --attention-dropout 0 --max-tokens 3000 --warmup 400): OpenNMT-py counts a token
# batch as examples x the longer side, so 1536 matches 3000 source + target tokens; noam with
# factor 0.32 peaks at lr 1e-3 after 400 steps, then decays as 1/sqrt(step).
cat > "$work/config.yaml" <<EOF
save_data: $work/run
src_vocab: $work/vocab.src
tgt_vocab: $work/vocab.tgt
share_vocab: true
overwrite: true
data:
  corpus_1:
    path_src: $data/train30k.de
    path_tgt: $data/train30k.en
    transforms: [sentencepiece, filtertoolong]
  valid:
    path_src: $data/valid.de
    path_tgt: $data/valid.en
    transforms: [sentencepiece]
src_subword_model: $work/spm.model
tgt_subword_model: $work/spm.model
src_seq_length: 100
tgt_seq_length: 100
save_model: $work/model
save_checkpoint_steps: 200
keep_checkpoint: 2
seed: 1
train_steps: 1000000
valid_steps: 1000000
report_every: 100
encoder_type: transformer
decoder_type: transformer
position_encoding: true
enc_layers: 3
dec_layers: 3
heads: 4
hidden_size: 256
word_vec_size: 256
transformer_ff: 1024
dropout: [0.1]
attention_dropout: [0.0]
share_embeddings: true
share_decoder_embeddings: true
batch_type: tokens
batch_size: 1536
optim: adam
adam_beta1: 0.9
adam_beta2: 0.98
learning_rate: 0.32
decay_method: noam
warmup_steps: 400
max_grad_norm: 1.0
label_smoothing: 0.1
param_init: 0
param_init_glorot: true
normalization: tokens
EOF
cd "$work"
rm -f model_step_*.pt
"$venv/bin/onmt_build_vocab" -config config.yaml -n_sample -1 > vocab.log 2>&1
start=$(date +%s)
timeout $((minutes * 60)) "$venv/bin/onmt_train" -config config.yaml > train.log 2>&1 || true
echo "train wall $(( $(date +%s) - start ))s" | tee summary.txt
last=$(ls -t model_step_*.pt | head -1)
echo "checkpoint $last" | tee -a summary.txt
"$venv/bin/python" - "$data/test.de" <<'EOF'
import sys
import sentencepiece
sp = sentencepiece.SentencePieceProcessor(model_file="spm.model")
with open(sys.argv[1], encoding="utf-8") as src, open("test.sp.de", "w", encoding="utf-8") as out:
    out.writelines(" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n" for line in src)
EOF
start=$(date +%s)
# OpenNMT-py checkpoints pickle an argparse.Namespace, which torch >= 2.6 refuses to load by default.
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$venv/bin/onmt_translate" -model "$last" -src test.sp.de -output test.sp.hyp -beam_size 5 -batch_size 4096 \
    -batch_type tokens > translate.log 2>&1
echo "test decode wall $(( $(date +%s) - start ))s" | tee -a summary.txt
"$venv/bin/python" - <<'EOF'
import sentencepiece
sp = sentencepiece.SentencePieceProcessor(model_file="spm.model")
with open("test.sp.hyp", encoding="utf-8") as hyp, open("test.hyp", "w", encoding="utf-8") as out:
    out.writelines(sp.decode(line.split()) + "\n" for line in hyp)
EOF
"$venv/bin/sacrebleu" "$data/test.en" -i test.hyp -m bleu chrf | tee -a summary.txt
grep -E "Step .*tok/s" train.log | tail -3 | tee -a summary.txt
