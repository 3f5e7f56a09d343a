#!/usr/bin/env bash
# The study corpus (data/study_corpus/, what configs/study/*.json train on): the English manuals of 27 Debian 12
# documentation packages (configs/corpora/debian_docs.json; ~300 MB of .deb files fetched with apt-get download),
# the 30,528-entry uncased WordPiece vocabulary the study's results were measured with
# (configs/corpora/debian_docs_vocab.txt), and the corpus preprocessed into .bin/.idx with it. Every build gives
# the same files: the vocabulary is shipped, not trained here, because the tokenizers library breaks ties between
# equally frequent merges and orders its alphabet differently on each training run, so two trainings on this very
# corpus give two vocabularies (and other token ids). VOCAB=train trains a new one instead (the recipe the shipped
# one came from); its results are then not comparable token for token with those in docs/STUDY.md.
# About 5 minutes on 2 CPU cores; the .deb files are kept in DEBS for the next build.
#
#   bash examples/study_corpus.sh
#   DEBS=/data/debs OUT=/data/study_corpus bash examples/study_corpus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=${DEBS:-/tmp/megabert-study-debs}
OUT=${OUT:-data/study_corpus}
VOCAB=${VOCAB:-configs/corpora/debian_docs_vocab.txt}
python3 tools/build_doc_corpus.py --manifest configs/corpora/debian_docs.json --debs "$DEBS" --output-dir "$OUT"
if [ "$VOCAB" = train ]; then
  python3 tools/train_tokenizer.py --input "$OUT/c4-train.00000-of-00001.json.gz" --type wordpiece \
    --vocab-size 30528 --lowercase --output-dir "$OUT"
else
  cp "$VOCAB" "$OUT/vocab.txt"
fi
python3 tools/preprocess_data.py --input "$OUT/c4-train.00000-of-00001.json.gz" --output-prefix "$OUT/corpus" \
  --tokenizer-type BertWordPieceLowerCase --vocab-file "$OUT/vocab.txt" --workers "$(nproc)"
ls -la "$OUT"
