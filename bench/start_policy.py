"""The start policy over thousands of simulated utterances: first audio and gaps, per model.

Question: for Hamsa delivering as each named model says, what does the caller hear with the
start policy (``bridge/calls/start_policy.py``) at its defaults, against playing from the first
byte (``BRIDGE_START_HOLD_MAX_MS=0``) and against collecting each whole reply first (the seed
FAQ's pattern (c), pipelined)? In simulated time (``bridge.dev.start_sim``): no sockets, no event
loop, so it measures the rule alone; ``bench/first_audio.py`` measures the real bridge.

The schedules follow the emulator's delivery models (``bridge/dev/hamsa_emulator.py``), drawn
here with their own seeded generator: realistic (first byte 0.3-1.7 s, a first frame of
0.2-0.5 s of audio, the rest in 3-6 weighted pieces at 2-4x real time), observed (first byte
0.3-1.7 s, a first frame of 0.1-0.3 s, 4-7 frames in all at 0.8-1.8x with ±30 % jitter), slow
(0.9x, ~1 s frames), bursty (1.5-3x with stalls of up to 1 s) and fast (3x, a first frame of
1-1.5 s). Texts: the announcement of ``bench/first_audio.py`` (3 sentences, 80 ms/char).

Two rows per model bound what any start rule can do: the **oracle** (the earliest gap-free
start, knowing every arrival in advance) and a rule that knows the first sentence's arrivals in
advance and the later sentences' delivery only as the model's distribution (gap-free for them
with probability 90 %, 95 % or 99 %). A last row is the issue's bound for first audio: half of
(c)'s.

Run: ``python bench/start_policy.py [--utterances 2000] [--max-hold 3.0] [--margin 0.2]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable

from figures import quantile

from bridge.calls.start_policy import HamsaPace
from bridge.dev.start_sim import Schedule, simulate
from bridge.sentences import split_text

ANNOUNCEMENT = (
    "نود إعلامكم بأن مواعيد العيادة ستتغير ابتداء من الأسبوع القادم. "
    "ستكون ساعات العمل من الثامنة صباحا حتى الرابعة عصرا. "
    "للاستفسار يرجى الاتصال بنا خلال ساعات الدوام الرسمي."
)
MS_PER_CHAR = 80.0


def _pieces(rng: random.Random, rest: float, count: int) -> list[float]:
    weights = [rng.uniform(0.4, 1.6) for _ in range(count)]
    scale = rest / sum(weights)
    return [w * scale for w in weights]


def realistic(rng: random.Random, audio: float) -> Schedule:
    fb = rng.uniform(0.3, 1.7)
    speed = rng.uniform(2.0, 4.0)
    first = min(audio, rng.uniform(0.2, 0.5))
    out = [(fb, first)]
    t = fb
    for piece in _pieces(rng, audio - first, rng.randint(3, 6)):
        t += piece / speed
        out.append((t, piece))
    return out


def observed(rng: random.Random, audio: float) -> Schedule:
    """docs/hamsa-ws.md §3.5: a whole sentence in 0.8-1.8x real time from the request (2.3-5 s for
    ~4 s of audio), the first audio after 0.3-1.7 s (at most half of that), 4-7 frames of
    irregular size (weights 0.4-1.6) after a small first one (0.1-0.3 s), synthesised at a
    steady pace with ±20 % jitter per interval."""
    total = audio / rng.uniform(0.8, 1.8)
    fb = min(rng.uniform(0.3, 1.7), 0.5 * total)
    first = min(audio, rng.uniform(0.1, 0.3))
    out = [(fb, first)]
    speed = (audio - first) / (total - fb)
    t = fb
    for piece in _pieces(rng, audio - first, rng.randint(3, 6)):
        t += piece / speed * rng.uniform(0.8, 1.2)
        out.append((t, piece))
    return out


def slow(rng: random.Random, audio: float) -> Schedule:
    fb = rng.uniform(0.3, 1.7)
    first = min(audio, rng.uniform(0.2, 0.3))
    out = [(fb, first)]
    t, left = fb, audio - first
    while left > 1e-9:
        piece = min(left, rng.uniform(0.6, 1.4))
        t += piece / 0.9
        out.append((t, piece))
        left -= piece
    return out


def bursty(rng: random.Random, audio: float) -> Schedule:
    fb = rng.uniform(0.3, 1.7)
    speed = rng.uniform(1.5, 3.0)
    first = min(audio, rng.uniform(0.2, 0.5))
    out = [(fb, first)]
    t = fb
    for piece in _pieces(rng, audio - first, rng.randint(5, 10)):
        t += piece / speed * 0.3
        if rng.random() < 0.35:
            t += rng.uniform(0.3, 1.0)
        out.append((t, piece))
    return out


def fast(rng: random.Random, audio: float) -> Schedule:
    fb = rng.uniform(0.2, 0.4)
    first = min(audio, rng.uniform(1.0, 1.5))
    out = [(fb, first)]
    t, left = fb, audio - first
    while left > 1e-9:
        piece = min(left, rng.uniform(0.5, 1.0))
        t += piece / 3.0
        out.append((t, piece))
        left -= piece
    return out


MODELS: dict[str, Callable[[random.Random, float], Schedule]] = {
    "realistic": realistic,
    "observed": observed,
    "slow": slow,
    "bursty": bursty,
    "fast": fast,
}


def whole_reply(replies: list[Schedule]) -> tuple[float, list[float]]:
    """Pattern (c): each reply collected whole, then played; reply k+1 fetched while k plays."""
    t = 0.0
    playout_end: float | None = None
    first = 0.0
    gaps: list[float] = []
    for schedule in replies:
        done = t + schedule[-1][0]
        audio = sum(s for _, s in schedule)
        if playout_end is None:
            first = done
            playout_end = done
        elif done > playout_end:
            gaps.append(done - playout_end)
            playout_end = done
        playout_end += audio
        t = done
    return first, gaps


def oracle(replies: list[Schedule]) -> float:
    """The earliest start that plays the whole utterance without a gap, knowing every arrival in
    advance (no policy can do better): ``max_k(t_k - P_k)`` over all its frames, reply k+1
    requested when reply k ends, as the bridge requests them."""
    return max(0.0, _worst(replies))


def _worst(replies: list[Schedule]) -> float:
    """``max_k(t_k - P_k)`` over the frames of ``replies``, timed from the first one's request,
    positions from 0, each reply requested when the one before it ends."""
    t0 = position = 0.0
    worst = -float("inf")
    for schedule in replies:
        for at, seconds in schedule:
            worst = max(worst, t0 + at - position)
            position += seconds
        t0 += schedule[-1][0]
    return worst


def first_known_bound(utterances: list[list[Schedule]], q: float) -> tuple[list[float], int]:
    """A policy better than any real one: it knows the first sentence's every arrival in
    advance, and later sentences' delivery as the model draws it (their distribution, not their
    draw). Gap-free for the later sentences with probability ``q``, it starts at
    ``max(first sentence's gap-free start, its reply's end - its audio + w_q)``, w_q the
    q-quantile of the later sentences' own gap-free start. (starts, utterances with a pause)."""
    later = sorted(_worst(replies[1:]) for replies in utterances if len(replies) > 1)
    w_q = quantile(later, q) if later else None
    starts, paused = [], 0
    for replies in utterances:
        first = replies[0]
        start = _worst([first])
        if w_q is not None:
            start = max(start, first[-1][0] - sum(s for _, s in first) + w_q)
        starts.append(start)
        paused += oracle(replies) > start + 1e-9
    return starts, paused


def pct(values: list[float], q: float) -> float:
    found = quantile(values, q)
    assert found is not None
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--max-hold", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    chars = [len(s) for s in split_text(ANNOUNCEMENT, language="ar")]
    print(f"sentences: {chars} characters; {args.utterances} utterances per model")
    header = (
        "| model | variant | first audio p50 | p95 | calls with a gap > 40 ms "
        "| total gap s/call | longest gap |"
    )
    print(header)
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        draw = MODELS[name]
        rng = random.Random(f"{args.seed}:{name}")
        utterances = [
            [draw(rng, c * MS_PER_CHAR / 1000) for c in chars] for _ in range(args.utterances)
        ]
        rows: dict[str, tuple[list[float], list[list[float]]]] = {}
        for variant, hold in (("policy", args.max_hold), ("first byte", 0.0)):
            pace = HamsaPace()
            firsts, gaps = [], []
            for replies in utterances:
                result = simulate(replies, chars, pace, max_hold=hold, margin=args.margin)
                firsts.append(result.first_audio)
                gaps.append(result.gaps)
            rows[variant] = (firsts, gaps)
        c_first, c_gaps = [], []
        for replies in utterances:
            f, g = whole_reply(replies)
            c_first.append(f)
            c_gaps.append(g)
        rows["whole reply (c)"] = (c_first, c_gaps)
        rows["oracle: gap-free, every arrival known"] = (
            [oracle(replies) for replies in utterances],
            [[] for _ in utterances],
        )
        for variant, (firsts, gaps) in rows.items():
            over = sum(1 for g in gaps if any(x > 0.04 for x in g))
            total = statistics.fmean(sum(g) for g in gaps)
            longest = max((max(g) for g in gaps if g), default=0.0)
            print(
                f"| {name} | {variant} | {pct(firsts, 0.5):.2f} s | {pct(firsts, 0.95):.2f} s "
                f"| {over}/{len(gaps)} | {total:.3f} | {longest:.2f} s |"
            )
        for q in (0.9, 0.95, 0.99):
            starts, paused = first_known_bound(utterances, q)
            print(
                f"| {name} | bound: first sentence known, later ones gap-free at {q:.0%} "
                f"| {pct(starts, 0.5):.2f} s | {pct(starts, 0.95):.2f} s "
                f"| {paused}/{len(utterances)} | - | - |"
            )
        print(
            f"| {name} | ½ of (c), the goal's bound | {pct(c_first, 0.5) / 2:.2f} s "
            f"| {pct(c_first, 0.95) / 2:.2f} s | - | - | - |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
