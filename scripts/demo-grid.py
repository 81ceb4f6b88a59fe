"""The README's grid of demo pictures: one row per held-out caption, its drawing (what the
caption asks for) and the demo model's picture under each benchmark configuration, framed by
the pixel judge's verdict: green when it passes (colours, place, size and shape right), amber
when it is only placed (colours, place and size right), red otherwise.

Usage: python scripts/demo-grid.py EVAL_DIR BENCH_DIR OUT.png
  EVAL_DIR  `sd3lab model shapes --held-out` output (captions.jsonl and the drawings)
  BENCH_DIR `sd3lab benchmark --prompt-csv EVAL_DIR/prompts.csv` output
Runs `target/release/sd3lab model judge BENCH_DIR --json` for the verdicts. Needs Pillow.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SCALE = 2
PAD = 6
FRAME = 3
TEXT_W = 230


def main(eval_dir: Path, bench_dir: Path, out: Path) -> None:
    captions = [json.loads(line) for line in (eval_dir / "captions.jsonl").read_text().splitlines() if line]
    judged = json.loads(
        subprocess.run(
            ["target/release/sd3lab", "model", "judge", str(bench_dir), "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    configs = [c for c in judged["configurations"] if c["name"] != "reference"]
    passed = {
        c["name"]: {i: v for i, v in c["verdicts"]} for c in configs
    }
    first = Image.open(eval_dir / captions[0]["file"])
    cell = first.width * SCALE
    cols = 1 + len(configs)
    font = ImageFont.load_default(size=13)
    header = 22
    width = TEXT_W + cols * (cell + 2 * FRAME + PAD) + PAD
    height = header + len(captions) * (cell + 2 * FRAME + PAD) + PAD
    grid = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(grid)
    names = ["asked for"] + [
        f'{c["name"]} ({c["score"]["placed"]}/{c["score"]["passed"]}/{c["score"]["pictures"]})'
        for c in configs
    ]
    for j, name in enumerate(names):
        x = TEXT_W + j * (cell + 2 * FRAME + PAD)
        draw.text((x + FRAME, 5), name, fill=(20, 20, 20), font=font)
    for i, item in enumerate(captions):
        y = header + i * (cell + 2 * FRAME + PAD)
        for k, line in enumerate(textwrap.wrap(item["caption"], 30)):
            draw.text((PAD, y + 8 + 17 * k), line, fill=(20, 20, 20), font=font)
        pictures = [(eval_dir / item["file"], None)] + [
            (bench_dir / c["name"] / "images" / f"{i:06}.png", passed[c["name"]].get(i))
            for c in configs
        ]
        for j, (path, verdict) in enumerate(pictures):
            x = TEXT_W + j * (cell + 2 * FRAME + PAD)
            if verdict is not None:
                placed = (
                    verdict["shape_colour"] and verdict["background"] and verdict["iou"] >= judged["iou_pass"]
                )
                colour = (40, 170, 60) if placed and verdict["shape"] else (235, 160, 20) if placed else (210, 50, 40)
                draw.rectangle([x, y, x + cell + 2 * FRAME - 1, y + cell + 2 * FRAME - 1], fill=colour)
            picture = Image.open(path).convert("RGB").resize((cell, cell), Image.NEAREST)
            grid.paste(picture, (x + FRAME, y + FRAME))
    grid.save(out)
    print(f"wrote {out} ({len(captions)} captions x {len(configs)} configurations)")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
