#!/usr/bin/env python3
"""Drive clipscope's terminal app in real terminal emulators under Xvfb and check
screenshots of every step.

For each terminal of the matrix (xterm with sixel on a light and a dark theme, kitty,
Konsole, tmux inside xterm with and without allow-passthrough) the real binary is
started on a folder of two photos and driven with xdotool as a person would: start,
typing, help open and closed, the next image, the Train pane and back, a resize, quit.
Every step is screenshot and checked:

- the picture: the app's picture rectangle (from its trace, CLIPSCOPE_TUI_TRACE) is
  compared with the decoded image, both reduced to a few dozen pixels a side (mean
  absolute difference); the other photo must compare clearly worse (the check can fail);
- nothing outside it: inside the image pane, around the picture, only the background;
  elsewhere no cell holds picture pixels (a text cell has two colours and the blends
  between them; a photo's cell does not);
- help closed, and the Train pane left: the screen is the same as before, pixel for pixel;
  the Train pane is the same as in a run that never showed a picture;
- the status bar's text and background contrast at least 4.5:1 (WCAG);
- quit: exit status 0, no picture left on the screen.

With --latency, two busy loops load both cores and, in xterm with sixel and in tmux
with sixel, a key typed right after PgDn is timed from the key event (XTEST, the same
path xdotool uses, sent from here to know the instant) until its glyph is on the screen.

Needs: Xvfb, xterm, kitty, konsole, tmux, xdotool (Debian: xvfb xterm kitty konsole tmux
xdotool), python3 with numpy, Pillow and python-xlib. Exit status 0 when every check
passes. Usage:

    python3 tests/terminals/matrix.py --bin target/release/clipscope [--out DIR]
        [--only xterm,kitty,...] [--latency] [--trials N]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from Xlib import X, XK, display as xdisplay
from Xlib.ext import xtest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
COLS, ROWS = 120, 36
FONT = "DejaVu Sans Mono"

# What a terminal is started with; the app runs through `run.sh` inside it.
XTERM = ["xterm", "-ti", "vt340", "-fa", FONT, "-fs", "10", "-b", "0", "+sb",
         "-geometry", f"{COLS}x{ROWS}+0+0",
         "-xrm", "XTerm*metaSendsEscape: true",
         "-xrm", "XTerm*numColorRegisters: 1024",
         "-xrm", "XTerm*cursorBlink: false"]
TERMINALS = {
    # xterm's default colours are black on white: the light theme.
    "xterm": {"argv": XTERM + ["-e"], "mode": "sixel"},
    "xterm-dark": {"argv": XTERM + ["-bg", "black", "-fg", "white", "-e"], "mode": "sixel"},
    "kitty": {
        "argv": ["kitty", "--config", "NONE", "-o", "font_size=10", "-o", f"font_family={FONT}",
                 "-o", "window_padding_width=0", "-o", "cursor_blink_interval=0",
                 "-o", "remember_window_size=no",
                 "-o", f"initial_window_width={COLS}c", "-o", f"initial_window_height={ROWS}c"],
        "env": {"LIBGL_ALWAYS_SOFTWARE": "1"},
        "mode": "kitty (direct)",
    },
    "konsole": {
        "argv": ["konsole", "--hide-menubar", "--hide-tabbar", "--separate",
                 "-p", f"TerminalColumns={COLS}", "-p", f"TerminalRows={ROWS}",
                 "-p", "ScrollBarPosition=2", "-p", "BlinkingCursorEnabled=false",
                 "-p", "ShowTerminalSizeHint=false",
                 "-e"],
        "mode": "kitty (direct)",
    },
    "tmux-passthrough": {"argv": XTERM + ["-e"], "tmux": "on", "mode": "sixel"},
    "tmux-no-passthrough": {"argv": XTERM + ["-e"], "tmux": "off", "mode": "halfblocks"},
}

RUN_SH = r"""#!/bin/sh
# Inside the terminal: mark two corner cells (magenta) for calibration, again whenever
# the size changes (tmux starts its pane at 80x24), wait for "go", run the app.
W="$1"; shift
cd "$W"
mark() {
    stty size > "$W/size.new" && mv "$W/size.new" "$W/size"
    read rows cols < "$W/size"
    printf '\033[?25l\033[2J\033[H\033[48;5;201m \033[0m\033[%s;%sH\033[48;5;201m \033[0m' \
        "$rows" "$cols"
}
mark
while [ ! -e "$W/go" ]; do
    sleep 0.05
    [ "$(stty size)" = "$rows $cols" ] || mark
done
printf '\033[2J\033[H\033[?25h'
CLIPSCOPE_TUI_TRACE="$W/trace.jsonl" "$@"
echo $? > "$W/exit"
printf 'exit=%s\n' "$(cat "$W/exit")"
exec sleep 3600
"""


class Failure(Exception):
    pass


def remove(folder):
    """Remove a session's folder; a terminal may still write its settings as it exits."""
    for _ in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        if not Path(folder).exists():
            return
        time.sleep(0.5)


def log(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------- X server and input

class XServer:
    def __init__(self, width=1400, height=1000):
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", f"{width}x{height}x24",
             "-nolisten", "tcp"], pass_fds=[w], stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(w)
        number = b""
        while not number.endswith(b"\n"):
            chunk = os.read(r, 16)
            if not chunk:
                raise Failure("Xvfb did not start")
            number += chunk
        os.close(r)
        self.name = ":" + number.decode().strip()
        self.d = xdisplay.Display(self.name)
        self.root = self.d.screen().root

    def close(self):
        self.d.close()
        self.proc.terminate()
        self.proc.wait()

    def env(self):
        env = dict(os.environ, DISPLAY=self.name)
        env.pop("TMUX", None)
        env.pop("NO_COLOR", None)
        return env

    def windows(self):
        out = []
        for w in self.root.query_tree().children:
            try:
                attrs = w.get_attributes()
                geo = w.get_geometry()
            except Exception:
                continue
            if attrs.map_state == X.IsViewable and geo.width > 200 and geo.height > 100:
                out.append((w, geo))
        return out

    def grab(self, geo):
        # A window's position is its border's corner; its size excludes the border.
        bw = geo.border_width
        raw = self.root.get_image(geo.x + bw, geo.y + bw, geo.width, geo.height, X.ZPixmap,
                                  0xffffffff)
        img = np.frombuffer(raw.data, dtype=np.uint8).reshape(geo.height, geo.width, 4)
        return img[:, :, [2, 1, 0]].copy()

    def keycode(self, name):
        sym = XK.string_to_keysym(name)
        if sym == 0 and len(name) == 1:
            sym = ord(name)
        code = self.d.keysym_to_keycode(sym)
        if not code:
            raise Failure(f"no key for {name}")
        return code

    def fake_key(self, combo):
        """Press and release a key (`x`, `F1`, `alt+2`) through XTEST."""
        *mods, key = combo.split("+")
        codes = [self.keycode({"alt": "Alt_L", "ctrl": "Control_L", "shift": "Shift_L"}[m])
                 for m in mods] + [self.keycode(key)]
        for c in codes:
            xtest.fake_input(self.d, X.KeyPress, c)
        for c in reversed(codes):
            xtest.fake_input(self.d, X.KeyRelease, c)
        self.d.sync()


# ---------------------------------------------------------------- one terminal session

class Session:
    """One terminal with the app in it."""

    def __init__(self, xs, name, spec, args, work):
        self.xs, self.name, self.spec, self.work = xs, name, spec, Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        run = self.work / "run.sh"
        run.write_text(RUN_SH)
        run.chmod(0o755)
        inner = [str(run), str(self.work)] + args
        env = xs.env()
        env.update(spec.get("env", {}))
        # Fresh settings: Konsole, for one, restores the last window size otherwise.
        home = self.work / "home"
        for var, sub in [("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"),
                         ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache")]:
            (home / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(home / sub)
        if spec.get("tmux"):
            conf = self.work / "tmux.conf"
            conf.write_text(f"set -g status off\nset -g allow-passthrough {spec['tmux']}\n"
                            "set -sg escape-time 10\nset -g default-terminal tmux-256color\n")
            self.socket = f"clipscope-matrix-{os.getpid()}-{name}"
            inner = ["tmux", "-L", self.socket, "-f", str(conf), "new-session", "-s", "m",
                     " ".join(f"'{a}'" for a in inner)]
        before = {w.id for w, _ in xs.windows()}
        self.proc = subprocess.Popen(spec["argv"] + inner, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self.win, self.geo = self.wait(lambda: self.new_window(before), 20, "its window")
            size = self.work / "size"
            self.wait(lambda: size.exists() and len(size.read_text().split()) == 2, 20,
                      "the shell inside")
            self.wait(self.calibrate, 20, "the calibration cells")
        except BaseException:
            try:
                Image.fromarray(self.shot()).save(self.work.parent / f"{name}-failed-start.png")
            except Exception:
                pass
            self.close()
            raise

    def new_window(self, before):
        fresh = [(w, g) for w, g in self.xs.windows() if w.id not in before]
        if not fresh:
            return None
        return max(fresh, key=lambda wg: wg[1].width * wg[1].height)

    def wait(self, pred, timeout, what):
        end = time.time() + timeout
        while time.time() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.05)
        raise Failure(f"{self.name}: timed out waiting for {what}")

    def refresh_geometry(self):
        g = self.win.get_geometry()
        # Top-level windows sit on the root without a window manager.
        self.geo = g

    def shot(self):
        self.refresh_geometry()
        return self.xs.grab(self.geo)

    def calibrate(self):
        """Find the cell grid from the two magenta corner cells; False until drawn."""
        rows, cols = map(int, (self.work / "size").read_text().split())
        img = self.shot()
        magenta = np.abs(img.astype(int) - [255, 0, 255]).sum(axis=2) < 60
        ys, xs = np.nonzero(magenta)
        if len(xs) == 0:
            return False
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        self.cell = ((x1 - x0) / cols, (y1 - y0) / rows)
        self.origin = (int(x0), int(y0))
        self.size = (cols, rows)
        # The top-left cell alone must be one cell in size.
        first = magenta[y0:y0 + 2 * int(self.cell[1]), x0:x0 + 2 * int(self.cell[0])]
        cw, ch = first.sum(axis=1).max(), first.sum(axis=0).max()
        if abs(self.cell[0] - cw) > 1 or abs(self.cell[1] - ch) > 1:
            return False  # one corner drawn, not yet the other
        self.bg = dominant(crop(img, self.px([0, 1, cols, rows - 2])))
        return True

    def px(self, rect):
        """A cell rectangle [x, y, w, h] in pixels (x0, y0, x1, y1)."""
        x, y, w, h = rect
        (ox, oy), (cw, ch) = self.origin, self.cell
        return (round(ox + x * cw), round(oy + y * ch), round(ox + (x + w) * cw),
                round(oy + (y + h) * ch))

    def go(self):
        (self.work / "go").write_text("")

    def focus(self):
        subprocess.run(["xdotool", "windowfocus", "--sync", str(self.win.id)],
                       env=self.xs.env(), check=True)

    def key(self, *keys):
        self.focus()
        for k in keys:
            subprocess.run(["xdotool", "key", "--clearmodifiers", k], env=self.xs.env(),
                           check=True)
            time.sleep(0.05)

    def type(self, text):
        self.focus()
        subprocess.run(["xdotool", "type", "--delay", "30", text], env=self.xs.env(),
                       check=True)

    def resize(self, cols, rows):
        width = round(2 * self.origin[0] + cols * self.cell[0])
        height = round(2 * self.origin[1] + rows * self.cell[1])
        subprocess.run(["xdotool", "windowsize", "--sync", str(self.win.id), str(width),
                        str(height)], env=self.xs.env(), check=False)

    def trace(self):
        path = self.work / "trace.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def frames(self):
        return [r for r in self.trace() if r["ev"] == "frame"]

    def settle(self, want=None, timeout=20):
        """Wait until the app drew what `want(last frame)` asks, then until both its
        trace and the screen are still."""
        end = time.time() + timeout
        while time.time() < end:
            frames = self.frames()
            if frames and (want is None or want(frames[-1])):
                break
            time.sleep(0.05)
        else:
            raise Failure(f"{self.name}: the app never drew the expected frame; "
                          f"last: {self.frames()[-1:]}")
        last_n, last_shot = -1, None
        while time.time() < end:
            n = len(self.trace())
            shot = self.shot()
            if n == last_n and last_shot is not None and np.array_equal(shot, last_shot):
                return self.frames()[-1], shot
            last_n, last_shot = n, shot
            time.sleep(0.35)
        raise Failure(f"{self.name}: the screen never settled")

    def close(self):
        if getattr(self, "socket", None):
            subprocess.run(["tmux", "-L", self.socket, "kill-server"], stderr=subprocess.DEVNULL)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------- pixel checks

def dominant(img):
    flat = img.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    return colours[counts.argmax()].astype(int)


def crop(img, box):
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def fitted(image_path, size):
    """The size of an image scaled to fit `size` pixels, keeping its aspect ratio."""
    with Image.open(image_path) as ref:
        s = min(size[0] / ref.width, size[1] / ref.height)
        return max(1, round(ref.width * s)), max(1, round(ref.height * s))


def reference(image_path, size, mode, bg):
    """What the picture should look like in a box of `size` pixels: scaled to fit and
    padded on the right and bottom with the background; half-blocks fill the box."""
    ref = Image.open(image_path).convert("RGB")
    w, h = size
    if mode == "halfblocks":
        return np.asarray(ref.resize((w, h), Image.BILINEAR))
    fit = ref.resize(fitted(image_path, size), Image.BILINEAR)
    canvas = Image.new("RGB", (w, h), tuple(int(c) for c in bg))
    canvas.paste(fit, (0, 0))
    return np.asarray(canvas)


def small(arr, width=32):
    img = Image.fromarray(arr.astype(np.uint8))
    height = max(1, round(width * img.height / img.width))
    return np.asarray(img.resize((width, height), Image.BOX)).astype(float)


def mae(a, b):
    return float(np.abs(small(a) - small(b)).mean())


def segment_distance(px, a, b):
    """Distance of colours `px` (n, 3) to the segment from colour a to b."""
    ab = b - a
    denom = float((ab * ab).sum())
    if denom == 0:
        return np.sqrt(((px - a) ** 2).sum(axis=1))
    t = np.clip(((px - a) @ ab) / denom, 0, 1)
    nearest = a + t[:, None] * ab
    return np.sqrt(((px - nearest) ** 2).sum(axis=1))


def colour_keys(pixels):
    """Colours at 4 bits a channel, as integers."""
    q = (pixels.reshape(-1, 3).astype(int) >> 4)
    return q[:, 0] << 8 | q[:, 1] << 4 | q[:, 2]


def picture_colours(picture, ui_colours):
    """The colours of a picture on the screen that text on this terminal never shows:
    what a stray piece of it would give away."""
    keys, counts = np.unique(colour_keys(picture), return_counts=True)
    common = keys[counts >= max(3, picture.size // 3 // 2000)]
    return np.setdiff1d(common, ui_colours)


def stray_pixels(img, colours, keep=None):
    """Pixels of `img` in `colours`, outside the pixel box `keep`."""
    hit = np.isin(colour_keys(img), colours).reshape(img.shape[:2])
    if keep is not None:
        x0, y0, x1, y1 = keep
        hit[y0:y1, x0:x1] = False
    return int(hit.sum())


def contrast(c1, c2):
    def lum(c):
        v = [x / 255 for x in c]
        v = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
    hi, lo = sorted([lum(c1), lum(c2)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# ---------------------------------------------------------------- the checks

class Checker:
    def __init__(self, s, mode, out, images, baseline):
        self.s, self.mode, self.out, self.images = s, mode, out, images
        self.results = []
        # Every colour text takes on this terminal (glyph edges included), from the
        # screens of a run that never showed a picture.
        self.ui_colours = np.unique(np.concatenate([colour_keys(b) for b in baseline]))
        self.colours = None

    def save(self, step, img):
        Image.fromarray(img).save(self.out / f"{self.s.name}-{step}.png")

    def check(self, step, ok, detail):
        self.results.append((self.s.name, step, ok, detail))
        log(f"  {'ok  ' if ok else 'FAIL'} {step}: {detail}")

    def picture(self, step, frame, img, shown, other):
        """The picture in its rectangle is `shown`, around it only background, and no
        picture pixels anywhere else on the screen."""
        rect, area = frame["picture"], frame["image_area"]
        if rect is None:
            self.check(step, False, "no picture on the screen")
            return
        box = self.s.px(rect)
        got = crop(img, box)
        h, w = got.shape[:2]
        self.last_piece = got[h // 2: h // 2 + 32, w // 2: w // 2 + 64].copy()
        size = (box[2] - box[0], box[3] - box[1])
        right = mae(got, reference(shown, size, self.mode, self.s.bg))
        wrong = mae(got, reference(other, size, self.mode, self.s.bg))
        self.check(step, right < 22 and right < 0.6 * wrong,
                   f"picture vs its image: difference {right:.1f} (vs the other image "
                   f"{wrong:.1f}; needs < 22 and < 0.6x)")
        # Inside the pane, around the picture, and in the padding of its last cells (the
        # picture is scaled to fit, then padded to whole cells): background only.
        ax0, ay0, ax1, ay1 = self.s.px(area)
        pane = img[ay0:ay1, ax0:ax1].astype(int).copy()
        bx0, by0, bx1, by1 = box
        fw, fh = fitted(shown, size) if self.mode != "halfblocks" else size
        # One pixel of slack at the picture's edges, where scaling blends.
        pane[by0 - ay0:by0 - ay0 + fh + 1, bx0 - ax0:bx0 - ax0 + fw + 1] = self.s.bg
        stray = np.abs(pane - self.s.bg).sum(axis=2) > 30
        self.check(step, int(stray.sum()) == 0,
                   f"{int(stray.sum())} non-background pixels in the pane around the picture "
                   f"(its {size[0] - fw}x{size[1] - fh} px of cell padding included)")
        self.colours = picture_colours(got, self.ui_colours)
        share = float(np.isin(colour_keys(got), self.colours).mean())
        self.check(step, share > 0.5, f"{share:.0%} of the picture's pixels have colours "
                   "no text here has (what the stray-picture test looks for)")
        self.elsewhere(step, img, keep=self.s.px(area))

    def elsewhere(self, step, img, keep=None):
        """No pixel in the last picture's own colours outside `keep` (pixel box). The test
        is tried first on a copy with a piece of picture pasted in the status bar: it
        must see that one."""
        if self.colours is None or len(self.colours) == 0:
            self.check(step, False, "no picture colours to look for")
            return
        cols, rows = self.s.size
        x0, y0, x1, y1 = self.s.px([0, rows - 1, 4, 1])
        planted = img.copy()
        piece = self.last_piece[: y1 - y0, : x1 - x0]
        planted[y0:y0 + piece.shape[0], x0:x0 + piece.shape[1]] = piece
        seen = stray_pixels(planted, self.colours, keep)
        stray = stray_pixels(img, self.colours, keep)
        self.check(step, stray <= 20 and seen > 20 + stray,
                   f"{stray} pixels in picture colours outside "
                   f"{'the image pane' if keep else 'any picture'} (a planted piece: {seen})")

    def same(self, step, a, b, what, rows=None):
        if rows is not None:
            y0 = self.s.px([0, rows[0], 1, 1])[1]
            y1 = self.s.px([0, rows[1], 1, 1])[1]
            a, b = a[y0:y1], b[y0:y1]
        mask = np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 30
        # Antialiased glyphs spill a pixel or two into their neighbours, and terminals
        # redraw cells in different orders: up to 4 pixels in a cell differ without
        # anything being left behind (a leftover glyph or picture is dozens).
        ys, xs = np.nonzero(mask)
        (ox, oy), (cw, ch) = self.s.origin, self.s.cell
        per_cell = {}
        for x, y in zip(xs, ys):
            key = (int((x - ox) // cw), int((y - oy) // ch))
            per_cell[key] = per_cell.get(key, 0) + 1
        worst = max(per_cell.values(), default=0)
        bad = sorted(k for k, v in per_cell.items() if v > 4)
        if bad:
            self.save(step.replace(" ", "-") + "-now", a)
            self.save(step.replace(" ", "-") + "-before", b)
        self.check(step, not bad,
                   f"same as {what}: {len(bad)} cells differ (most pixels in one cell: {worst}"
                   f", {int(mask.sum())} pixels in all)"
                   + (f" at {bad[:6]}" if bad else ""))

    def status_bar(self, step, img):
        cols, rows = self.s.size
        box = self.s.px([0, rows - 1, cols, 1])
        bar = crop(img, box).reshape(-1, 3)
        colours, counts = np.unique(bar, axis=0, return_counts=True)
        order = counts.argsort()[::-1]
        back = colours[order[0]]
        # The text colour: the most common colour far from the bar's background.
        text = next((colours[i] for i in order[1:]
                     if np.abs(colours[i].astype(int) - back).sum() > 60), back)
        share = float((np.abs(bar.astype(int) - text).sum(axis=1) < 30).mean())
        ratio = contrast(back, text)
        self.check(step, ratio >= 4.5 and share > 0.005,
                   f"status bar {tuple(back)} on {tuple(text)}: contrast {ratio:.1f}:1, "
                   f"text {share:.0%} of it")


def run_terminal(xs, name, spec, args, out, base):
    images = args.images
    first, second = images[0], images[1]
    work = Path(tempfile.mkdtemp(prefix=f"clipscope-{name}-"))
    app = [str(args.bin), "tui", str(first), "--labels", "a cat,a dog", "--model-dir",
           str(FIXTURES / "tiny-clip")]
    try:
        s = Session(xs, name, spec, app, work)
    except Failure as e:
        remove(work)
        log(f"  FAIL start: {e}")
        return [(name, "start", False, str(e))]
    c = Checker(s, spec["mode"], out, images, base)
    try:
        log(f"{name}: cells {s.cell[0]:.1f}x{s.cell[1]:.1f} px at {s.origin}, "
            f"{s.size[0]}x{s.size[1]}")
        s.go()
        def showing(image):
            return lambda f: (f["picture"] is not None and f["pane"] == "Classify"
                              and f["image"] == image.name)
        frame, img = s.settle(showing(first))
        graphics = next(r for r in s.trace() if r["ev"] == "graphics")
        c.check("start", graphics["mode"] == spec["mode"],
                f"graphics {graphics['mode']!r} ({graphics['note']}), expected {spec['mode']!r}")
        c.save("1-start", img)
        c.picture("start", frame, img, first, second)
        c.status_bar("start", img)

        n = len(s.frames())
        s.type("x")
        frame, img = s.settle(lambda f: True)
        sent = sum(f["picture_bytes"] for f in s.frames()[n:])
        c.check("typing", sent == 0, f"{sent} picture bytes sent while typing")
        c.picture("typing", frame, img, first, second)
        c.save("2-typed", img)
        before_help = img

        s.key("F1")
        frame, img = s.settle(lambda f: f["help"] is not None)
        c.save("3-help", img)
        help_box = frame["help"]
        keep = s.px(frame["picture"]) if spec["mode"] == "halfblocks" else None
        c.elsewhere("help open", img, keep=keep)
        s.key("Escape")
        frame, img = s.settle(lambda f: f["help"] is None and showing(first)(f))
        c.same("help closed", img, before_help, "the screen before the help")
        c.picture("help closed", frame, img, first, second)

        s.key("Next")
        frame, img = s.settle(showing(second))
        c.save("4-next", img)
        c.picture("next image", frame, img, second, first)
        before_train = img

        s.key("alt+2")
        frame, img = s.settle(lambda f: f["pane"] == "Train")
        c.save("5-train", img)
        c.elsewhere("Train pane", img)
        c.same("Train pane", img, base[2], "the Train pane of a run without pictures",
               rows=(0, s.size[1] - 1))
        s.key("alt+1")
        frame, img = s.settle(showing(second))
        c.same("back to Classify", img, before_train, "the screen before the Train pane")

        cols, rows = s.size
        area = frame["image_area"]
        s.resize(cols - 24, rows - 6)
        frame, img = s.settle(lambda f: showing(second)(f) and f["image_area"] != area)
        s.size = tuple(frame["size"])
        c.save("6-resized", img)
        c.picture("resized", frame, img, second, first)

        s.key("ctrl+c")
        s.wait(lambda: (work / "exit").exists(), 10, "the app to exit")
        time.sleep(0.6)
        img = s.shot()
        c.save("7-quit", img)
        status = (work / "exit").read_text().strip()
        c.check("quit", status == "0", f"exit status {status}")
        c.elsewhere("quit", img)
        # Back on the normal screen: blank (cleared before the app) but for "exit=0".
        below = crop(img, s.px([0, 2, s.size[0], s.size[1] - 2])).astype(int)
        left = int((np.abs(below - s.bg).sum(axis=2) > 30).sum())
        c.check("quit", left == 0, f"{left} pixels left on the screen below the exit line")
    except Failure as e:
        c.check("run", False, str(e))
    finally:
        s.close()
        remove(work)
    return c.results


def baseline(xs, name, spec, args):
    """Screens of a run that never showed a picture: Classify, its help, Train."""
    work = Path(tempfile.mkdtemp(prefix=f"clipscope-{name}-base-"))
    app = [str(args.bin), "tui", "--labels", "a cat,a dog", "--model-dir",
           str(FIXTURES / "tiny-clip")]
    s = Session(xs, name + "-baseline", spec, app, work)
    try:
        s.go()
        _, classify = s.settle(lambda f: f["pane"] == "Classify")
        s.key("F1")
        _, help_screen = s.settle(lambda f: f["help"] is not None)
        s.key("Escape")
        s.settle(lambda f: f["help"] is None)
        s.key("alt+2")
        _, train = s.settle(lambda f: f["pane"] == "Train")
        return [classify, help_screen, train]
    finally:
        s.close()
        remove(work)


# ---------------------------------------------------------------- latency

def cell_changed(before, after, s, region):
    """The one cell of `region` (cells) that differs between two screenshots."""
    x, y, w, h = region
    for r in range(y, y + h):
        for c in range(x, x + w):
            box = s.px([c, r, 1, 1])
            if not np.array_equal(crop(before, box), crop(after, box)):
                return box
    return None


def grab_box(s, box):
    x0, y0, x1, y1 = box
    bw = s.geo.border_width
    raw = s.xs.root.get_image(s.geo.x + bw + x0, s.geo.y + bw + y0, x1 - x0, y1 - y0,
                              X.ZPixmap, 0xffffffff)
    return np.frombuffer(raw.data, dtype=np.uint8).reshape(y1 - y0, x1 - x0, 4)[:, :, :3]


def latency(xs, name, spec, args, photos, out):
    """Time keys typed right after PgDn, idle and with both cores busy."""
    work = Path(tempfile.mkdtemp(prefix=f"clipscope-{name}-lat-"))
    app = [str(args.bin), "tui", str(photos[0]), "--labels", "a cat,a dog", "--model-dir",
           str(FIXTURES / "tiny-clip")]
    s = Session(xs, name, spec, app, work)
    rows = []
    busy = []
    try:
        s.go()
        frame, before = s.settle(lambda f: f["picture"] is not None)
        # Find where a typed key appears, and what it looks like.
        s.focus()
        xs.fake_key("x")
        frame, typed = s.settle(lambda f: True)
        ix, iy, iw, ih = frame["image_area"]
        box = cell_changed(before, typed, s, [ix + iw, 1, s.size[0] - ix - iw, ih // 2])
        if box is None:
            raise Failure(f"{name}: the typed key was not found on the screen")
        glyph = crop(typed, box).copy()
        xs.fake_key("BackSpace")
        s.settle(lambda f: True)
        for load in (False, True):
            if load:
                # Each in its own session, as if started from two other terminals.
                busy = [subprocess.Popen(["sh", "-c", "exec yes > /dev/null"],
                                         start_new_session=True) for _ in range(2)]
                time.sleep(1)
            for trial in range(args.trials):
                for delay in (0.05, 0.15, 0.3):
                    n = len(s.trace())
                    xs.fake_key("Next")
                    time.sleep(delay)
                    t0 = time.monotonic()
                    xs.fake_key("x")
                    while not np.array_equal(grab_box(s, box), glyph):
                        if time.monotonic() - t0 > 10:
                            raise Failure(f"{name}: the key never appeared")
                        time.sleep(0.001)
                    ms = (time.monotonic() - t0) * 1e3
                    # When the picture was written, relative to the key (from the trace).
                    s.settle(lambda f: f["picture"] is not None, timeout=60)
                    recs = s.trace()[n:]
                    key_t = next((r["t_ms"] for r in recs if r["ev"] == "key"
                                  and r["key"] == "Char('x')"), None)
                    pic = [r for r in recs if r["ev"] == "frame" and r["picture_bytes"] > 0]
                    pic_t = pic[0]["t_ms"] - key_t if pic and key_t is not None else None
                    pic_bytes = pic[0]["picture_bytes"] if pic else 0
                    rows.append({"terminal": name, "busy": load, "delay_ms": delay * 1e3,
                                 "loadavg": os.getloadavg()[0],
                                 "echo_ms": round(ms, 1),
                                 "picture_written_ms_after_key": pic_t,
                                 "picture_bytes": pic_bytes})
                    log(f"  {'busy' if load else 'idle'} PgDn+{delay * 1e3:.0f} ms: key on "
                        f"screen after {ms:.0f} ms (picture {pic_bytes} B written "
                        f"{pic_t if pic_t is None else round(pic_t)} ms after the key)")
                    xs.fake_key("BackSpace")
                    s.settle(lambda f: True)
            for p in busy:
                p.terminate()
                p.wait()
            busy = []
    finally:
        for p in busy:
            p.terminate()
            p.wait()
        s.close()
        remove(work)
    return rows


def large_photos(folder):
    """Photos of 1000x872 pixels (the size in issue 14), from the fixtures."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]:
        path = folder / (Path(name).stem + ".png")
        Image.open(FIXTURES / "images" / name).convert("RGB").resize((1000, 872)).save(path)
        out.append(path)
    return out


def versions(env):
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, env=env)
            return (r.stdout.strip() or r.stderr.strip()).splitlines()[0]
        except Exception as e:
            return f"unknown ({e})"
    return {
        "xterm": first_line(["xterm", "-v"]),
        "kitty": first_line(["kitty", "--version"]),
        "konsole": first_line(["konsole", "--version"]),
        "tmux": first_line(["tmux", "-V"]),
        "Xvfb": first_line(["dpkg-query", "-W", "-f", "${Version}", "xvfb"]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "clipscope")
    ap.add_argument("--out", type=Path, default=None, help="screenshots and results here")
    ap.add_argument("--only", default=",".join(TERMINALS), help="terminals, comma-separated")
    ap.add_argument("--latency", action="store_true", help="also time keys after PgDn")
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    if not args.bin.exists():
        sys.exit(f"no binary at {args.bin}: cargo build --release first")
    for tool in ["Xvfb", "xdotool"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (Debian: apt-get install xvfb xdotool)")
    out = args.out or Path(tempfile.mkdtemp(prefix="clipscope-matrix-"))
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="clipscope-photos-"))
    # A landscape photo, then a portrait one: leftovers of the first would show.
    args.images = [folder / "a-chelsea.png", folder / "b-tall.png"]
    shutil.copy(FIXTURES / "images" / "chelsea.png", args.images[0])
    shutil.copy(FIXTURES / "images" / "tall.png", args.images[1])
    xs = XServer()
    results, timings = [], []
    try:
        info = versions(xs.env())
        log("versions: " + json.dumps(info))
        for name in args.only.split(","):
            spec = TERMINALS[name]
            if not shutil.which(spec["argv"][0]):
                log(f"{name}: {spec['argv'][0]} is not installed; skipped")
                results.append((name, "installed", False, "not installed"))
                continue
            log(f"{name}:")
            try:
                base = baseline(xs, name, spec, args)
            except Failure as e:
                results.append((name, "baseline", False, str(e)))
                log(f"  FAIL baseline: {e}")
                continue
            results += run_terminal(xs, name, spec, args, out, base)
            if args.latency and spec["mode"] == "sixel" and name != "xterm-dark":
                timings += latency(xs, name, spec, args, large_photos(folder / "large"), out)
    finally:
        xs.close()
        remove(folder)
    failed = [r for r in results if not r[2]]
    summary = {"versions": info, "checks": [
        {"terminal": t, "step": st, "ok": ok, "detail": d} for t, st, ok, d in results]}
    if timings:
        summary["latency"] = timings
        for busy in (False, True):
            ms = [t["echo_ms"] for t in timings if t["busy"] == busy]
            if ms:
                log(f"key echo after PgDn, {'both cores busy' if busy else 'idle'}: "
                    f"median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms, n={len(ms)}")
        worst = max(t["echo_ms"] for t in timings)
        if worst >= 100:
            failed.append(("latency", "echo", False, f"{worst:.0f} ms"))
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    log(f"{len(results) - len([r for r in failed if r[0] != 'latency'])}/{len(results)} checks "
        f"passed; screenshots and results.json in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
