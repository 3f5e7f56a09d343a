#!/usr/bin/env bash
# The study corpus (data/study_corpus/, what configs/study/*.json train on): the English manuals of 27 Debian 12
# documentation packages (configs/corpora/debian_docs.json; ~300 MB of .deb files fetched with apt-get download),
# a 30,528-entry uncased WordPiece vocabulary trained on it, and the corpus preprocessed into .bin/.idx.
# About 5 minutes on 2 CPU cores; the .deb files are kept in DEBS for the next build. The corpus file is the same
# on every build, the vocabulary can differ in an entry or two (ties in the tokenizer's training): copy vocab.txt
# with the .bin/.idx to other machines instead of building it again there.
#
#   bash examples/study_corpus.sh
#   DEBS=/data/debs OUT=/data/study_corpus bash examples/study_corpus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEBS=${DEBS:-/tmp/megabert-study-debs}
OUT=${OUT:-data/study_corpus}
python3 tools/build_doc_corpus.py --manifest configs/corpora/debian_docs.json --debs "$DEBS" --output-dir "$OUT"
python3 tools/train_tokenizer.py --input "$OUT/c4-train.00000-of-00001.json.gz" --type wordpiece \
  --vocab-size 30528 --lowercase --output-dir "$OUT"
python3 tools/preprocess_data.py --input "$OUT/c4-train.00000-of-00001.json.gz" --output-prefix "$OUT/corpus" \
  --tokenizer-type BertWordPieceLowerCase --vocab-file "$OUT/vocab.txt" --workers "$(nproc)"
ls -la "$OUT"
