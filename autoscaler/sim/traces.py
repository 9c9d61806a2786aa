"""Workload traces for the simulator: arrivals (time, service) and the services' time models, seeded."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServiceModel:
    """How long a worker takes: batch time = overhead + sum of per-request times (lognormal jitter)."""

    name: str
    seconds_per_request: float
    batch_max: int = 1
    batch_overhead_s: float = 0.0
    jitter: float = 0.2                       # sigma of the lognormal factor on each request's time


@dataclass(frozen=True)
class Trace:
    """Arrivals sorted by time, the services they ask for, and how long the trace lasts."""

    name: str
    description: str
    arrivals: tuple[tuple[float, str], ...]
    services: dict[str, ServiceModel] = field(default_factory=dict)
    duration_s: float = 0.0


# The paper's experiment: Inception on t2.micro CPU workers, one request at a time.
PAPER_SERVICES = {"inception": ServiceModel("inception", seconds_per_request=2.0, batch_max=1)}
# GPU services of different weight (batching amortises a per-batch overhead).
GPU_SERVICES = {
    "imagenet": ServiceModel("imagenet", 0.05, batch_max=16, batch_overhead_s=0.02),
    "resnet": ServiceModel("resnet", 0.2, batch_max=8, batch_overhead_s=0.05),
    "densenet": ServiceModel("densenet", 0.4, batch_max=4, batch_overhead_s=0.05),
}

LEAD_IN_S = 120.0     # quiet time first, so an oracle can start workers before the load arrives


def burst40(seed: int = 0) -> Trace:
    """ClassifyCloud's experiment: 40 requests at once (after a quiet lead-in)."""
    rng = random.Random(seed)
    arrivals = tuple(sorted((LEAD_IN_S + rng.uniform(0, 1.0), "inception") for _ in range(40)))
    return Trace("burst40", "40 requests at once (ClassifyCloud's experiment), Inception on CPU, 2 s each",
                 arrivals, PAPER_SERVICES, duration_s=600.0)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam < 30:
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1
    return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))


def _from_rate(rng: random.Random, rate, duration_s: float, services: dict[str, ServiceModel],
               weights: dict[str, float]) -> tuple[tuple[float, str], ...]:
    """Poisson arrivals, one-second buckets, service drawn by weight."""
    names = list(weights)
    cum = list(weights.values())
    out = []
    for sec in range(int(duration_s)):
        for _ in range(_poisson(rng, rate(sec))):
            out.append((sec + rng.random(), rng.choices(names, cum)[0]))
    out.sort()
    return tuple(out)


MIX = {"imagenet": 0.5, "resnet": 0.3, "densenet": 0.2}


def step(seed: int = 0) -> Trace:
    """A step: 5 req/s, then 30 req/s for 15 minutes, then back."""
    rng = random.Random(seed)
    rate = lambda t: 30.0 if LEAD_IN_S + 180 <= t < LEAD_IN_S + 180 + 900 else 5.0
    return Trace("step", "5 -> 30 req/s for 15 min -> 5 req/s, GPU service mix", _from_rate(rng, rate, 1800, GPU_SERVICES, MIX),
                 GPU_SERVICES, duration_s=1800.0)


def spike(seed: int = 0) -> Trace:
    """A spike: 5 req/s with one minute at 100 req/s."""
    rng = random.Random(seed)
    rate = lambda t: 100.0 if LEAD_IN_S + 180 <= t < LEAD_IN_S + 240 else 5.0
    return Trace("spike", "5 req/s with one minute at 100 req/s, GPU service mix",
                 _from_rate(rng, rate, 1200, GPU_SERVICES, MIX), GPU_SERVICES, duration_s=1200.0)


def diurnal_rate(seed: int = 0, mean_rate: float = 12.0, day_s: float = 86400.0):
    """A day shaped like the Azure Functions 2019 public trace: a daily wave, minute-level noise, bursts.

    The trace (Shahrad et al., ATC'20) shows invocations with a strong diurnal cycle (trough about a
    third of the peak, peak early afternoon), noisy per minute, with short bursts; this generator
    reproduces that shape, seeded, at a rate our service mix can size.
    """
    rng = random.Random(seed)
    minutes = int(day_s // 60) + 1
    noise = [math.exp(rng.gauss(0, 0.15)) for _ in range(minutes)]
    bursts = [1.0] * minutes
    m = 0
    while m < minutes:
        m += int(rng.expovariate(1 / 120.0)) + 1           # about one burst every two hours
        for k in range(m, min(minutes, m + rng.randint(1, 3))):
            bursts[k] = rng.uniform(2.0, 3.0)

    def rate(t: float) -> float:
        phase = (t % day_s) / day_s
        wave = 1.0 + 0.5 * math.sin(2 * math.pi * (phase - 0.33))   # min at ~02:00, max at ~14:00
        m = int(t // 60) % minutes
        return mean_rate * wave * noise[m] * bursts[m]
    return rate


def diurnal(seed: int = 0, mean_rate: float = 12.0, day_s: float = 86400.0) -> Trace:
    """One day of Azure-Functions-shaped load on the GPU service mix."""
    rng = random.Random(seed + 1)
    rate = diurnal_rate(seed, mean_rate, day_s)
    return Trace("diurnal", f"a {day_s / 3600:.0f} h day shaped like the Azure Functions trace, mean {mean_rate:g} req/s",
                 _from_rate(rng, rate, day_s, GPU_SERVICES, MIX), GPU_SERVICES, duration_s=day_s)


TRACES = {"burst40": burst40, "step": step, "spike": spike, "diurnal": diurnal}
