"""Plot a soak run's RSS samples (scripts/soak.sh): CSV `seconds,rss_mib` to a PNG line chart.

Pillow only (already a test dependency), so the plot needs nothing more than the .venv.
usage: plot_rss.py rss.csv rss.png
"""
import csv
import sys

from PIL import Image, ImageDraw

W, H, LEFT, RIGHT, TOP, BOTTOM = 900, 360, 70, 20, 30, 45


def main(src: str, dst: str) -> None:
    with open(src) as f:
        rows = [(int(r["seconds"]), int(r["rss_mib"])) for r in csv.DictReader(f)]
    if not rows:
        sys.exit("no samples")
    t_max = max(t for t, _ in rows) or 1
    top = max(m for _, m in rows)
    y_max = max(64, ((top * 5 // 4) // 64 + 1) * 64)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    x = lambda t: LEFT + (W - LEFT - RIGHT) * t / t_max  # noqa: E731
    y = lambda m: H - BOTTOM - (H - TOP - BOTTOM) * m / y_max  # noqa: E731
    for k in range(0, 5):
        m = y_max * k // 4
        d.line([(LEFT, y(m)), (W - RIGHT, y(m))], fill=(225, 225, 225))
        d.text((8, y(m) - 6), f"{m} MiB", fill="black")
    for k in range(0, 7):
        t = t_max * k // 6
        d.text((x(t) - 12, H - BOTTOM + 8), f"{t // 60}:{t % 60:02d}", fill="black")
    d.line([(LEFT, TOP), (LEFT, H - BOTTOM), (W - RIGHT, H - BOTTOM)], fill="black")
    d.line([(x(t), y(m)) for t, m in rows], fill=(30, 90, 200), width=2)
    first_min = [m for t, m in rows if t >= 60] or [rows[-1][1]]
    d.text(
        (LEFT + 10, 8),
        f"framesrv RSS under mixed load, sampled every second: {len(rows)} samples, "
        f"max {top} MiB, after 1 min {min(first_min)}..{max(first_min)} MiB, last {rows[-1][1]} MiB",
        fill="black",
    )
    d.text((W // 2 - 40, H - 18), "elapsed (min:s)", fill="black")
    img.save(dst)
    print(f"{dst}: {len(rows)} samples, max {top} MiB, last {rows[-1][1]} MiB")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
