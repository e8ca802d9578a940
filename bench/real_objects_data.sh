#!/usr/bin/env bash
# Build the real-object benchmark set of issue 22 from Debian packages (nothing is downloaded, nothing is copied
# into the repository):
#
#   OUT/train/    600 scenes (192 px) from the training cut-outs     (unlabeled training images + ground truth)
#   OUT/heldout/   60 scenes (192 px) from the held-out cut-outs     (evaluation; objects never seen in train/)
#   OUT/backgrounds/  symbolic links to the photographs used, plus three scikit-image textures as PNG
#
# Usage:  bench/real_objects_data.sh [SEED] [OUT]        (defaults: SEED 0, OUT data/real_objects_s$SEED)
#         e.g. bench/real_objects_data.sh 1 /work/data/real_objects_s1
# Needs:  sudo apt-get install tuxpaint-stamps-default opencv-doc      (and unsolo installed, with scikit-image)
# Env:    WORKERS (default 2), NUM_TRAIN (600), NUM_HELDOUT (60), SIZE (192)
#
# Objects: the photograph folders of tuxpaint-stamps-default (GPL: used from /usr/share, never copied here):
# animals, food, household, plants, hobbies, space, sports, vehicles, without their cartoon/ sub-folders and the
# few drawn stamps among the photographs (food/pizza, a glow, goal posts). clothes/ is left out: its stamps are
# drawings (hats, shirts, clothes-pins), not photographs. The split is `--object-split`: a stable hash of each
# file name, 20 % held out (docs/synthetic.md). Backgrounds: scene and texture photographs of opencv-doc (aerial
# views, streets, buildings, a lake, a tree, a circuit board, graffiti, a painting) and scikit-image's grass,
# gravel and brick; the object-centred samples (apple, fruits, baboon, ...) and the synthetic ones (chessboards,
# logos, masks) are left out, as unlabeled objects in the background would count as false positives.
set -euo pipefail

SEED=${1:-0}
OUT=${2:-data/real_objects_s$SEED}
WORKERS=${WORKERS:-2}
NUM_TRAIN=${NUM_TRAIN:-600}
NUM_HELDOUT=${NUM_HELDOUT:-60}
SIZE=${SIZE:-192}
STAMPS=/usr/share/tuxpaint/stamps
CV=/usr/share/doc/opencv-doc/examples

if [ ! -d "$STAMPS/animals" ] || [ ! -d "$CV/data" ]; then
    echo "real_objects_data.sh: needs the Debian packages: sudo apt-get install tuxpaint-stamps-default opencv-doc" >&2
    exit 2
fi

BG="$OUT/backgrounds"
mkdir -p "$BG"
for f in data/aero1.jpg data/aero3.jpg data/board.jpg data/building.jpg data/graf1.png data/home.jpg \
         data/leuvenA.jpg data/starry_night.jpg hfs/data/001.jpg hfs/data/002.jpg reg/home.png \
         text/scenetext01.jpg text/scenetext02.jpg text/scenetext03.jpg text/scenetext04.jpg \
         text/scenetext05.jpg text/scenetext06.jpg; do
    [ -f "$CV/$f" ] || { echo "real_objects_data.sh: missing $CV/$f (opencv-doc changed?)" >&2; exit 2; }
    ln -sfn "$CV/$f" "$BG/opencv_$(echo "$f" | tr / _)"
done
python - "$BG" <<'EOF'
import sys
import numpy as np
import skimage.data
from PIL import Image

for name in ("grass", "gravel", "brick"):
    Image.fromarray(np.asarray(getattr(skimage.data, name)())).save(f"{sys.argv[1]}/skimage_{name}.png")
EOF

OBJECTS=()
for d in animals food household plants hobbies space sports vehicles; do
    OBJECTS+=(--objects "$STAMPS/$d")
done
EXCLUDE=(--exclude '*/cartoon/*' --exclude 'food/pizza.png' --exclude 'space/planets/0_sun.png'
         --exclude 'sports/rugby_goal_posts.png')

start=$(date +%s)
unsolo synth "$OUT/train" --num-images "$NUM_TRAIN" --size "$SIZE" --seed "$SEED" --object-split train \
    "${OBJECTS[@]}" "${EXCLUDE[@]}" --backgrounds "$BG" --workers "$WORKERS"
unsolo synth "$OUT/heldout" --num-images "$NUM_HELDOUT" --size "$SIZE" --seed "$SEED" --object-split heldout \
    "${OBJECTS[@]}" "${EXCLUDE[@]}" --backgrounds "$BG" --workers "$WORKERS"
echo "real-object set (seed $SEED) in $OUT: $(( $(date +%s) - start )) s"
