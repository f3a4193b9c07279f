"""The phrases the probe speaks, and what speaking them costs.

Four lengths (22, 54, 101 and 203 characters) so that first-byte latency, chunking and pace can
be told apart from length. ``--phrases N`` takes the first N, cycling through the list again
beyond four (repeats show how much the timing varies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

PHRASES: Final[tuple[str, ...]] = (
    "مرحبا بك في خدمة همسة.",
    "شكرا لاتصالك. سيتم تحويل مكالمتك إلى أحد موظفينا الآن.",
    "نود تذكيرك بموعدك القادم في العيادة يوم الأحد الساعة العاشرة صباحا. "
    "يرجى الحضور قبل الموعد بربع ساعة.",
    "عزيزي العميل، نشكرك على اختيارك خدماتنا. لقد تم استلام طلبك بنجاح وسيتواصل معك أحد "
    "ممثلي خدمة العملاء خلال يومي عمل. للاستفسار عن حالة الطلب، اضغط الرقم واحد، "
    "وللتحدث مع موظف، اضغط الرقم صفر. مع تحياتنا.",
)
MAX_PHRASES: Final = 12
"""Upper bound of ``--phrases`` (three rounds of the list)."""

ESTIMATE_MS_PER_CHAR: Final = 80.0
"""Audio per character assumed for the cost estimate (docs/hamsa-ws.md §4 logs 80–100 ms)."""
CREDITS_PER_MINUTE: Final = 3.0
"""Realtime TTS price: 3 credits per minute of audio, each request rounded up to a whole second
(docs/hamsa-ws.md §6, measured by a third party)."""


def phrases(count: int) -> list[str]:
    """The first ``count`` phrases, cycling through :data:`PHRASES`."""
    if not 1 <= count <= MAX_PHRASES:
        raise ValueError(f"the phrase count must be within 1..{MAX_PHRASES}, got {count}")
    return [PHRASES[i % len(PHRASES)] for i in range(count)]


@dataclass(frozen=True, slots=True)
class Cost:
    requests: int
    chars: int
    audio_s: float
    """Estimated audio, at :data:`ESTIMATE_MS_PER_CHAR`."""
    credits: float
    """Estimated credits: each request's audio rounded up to a second, 3 credits a minute."""


def estimate(texts: Sequence[str]) -> Cost:
    seconds = [len(t) * ESTIMATE_MS_PER_CHAR / 1000 for t in texts]
    billed = sum(math.ceil(s) for s in seconds)
    return Cost(
        requests=len(texts),
        chars=sum(len(t) for t in texts),
        audio_s=sum(seconds),
        credits=billed * CREDITS_PER_MINUTE / 60,
    )
