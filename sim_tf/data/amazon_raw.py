"""Synthetic raw input in the exact Amazon Reviews 2014 formats, so the whole pipeline runs offline.

* ``reviews_Books.json``: one JSON object per line with the 2014 fields (``reviewerID``, ``asin``,
  ``reviewerName``, ``helpful``, ``reviewText``, ``overall``, ``summary``, ``unixReviewTime``,
  ``reviewTime``), in no particular order (like the real file, which is sorted by item).
* ``meta_Books.json``: one *Python dict literal* per line (single quotes), with ``asin``, ``title``,
  ``price``, ``salesRank`` and ``categories`` (a list of category paths; the leaf of the first path is
  the item's category). A few items have no metadata line.

Planted signal: each user has a few interest categories that most of their reviews fall in, and
consecutive reviews often stay in the same category (a session), so the next review is predictable
from both the long and the recent history. Some users have fewer than 20 reviews and are dropped by
the preprocessing, as on the real data.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class RawConfig:
    users: int = 6_000
    items: int = 50_000
    categories: int = 300
    mean_extra_reviews: float = 12.0  # reviews beyond 20 for active users (geometric)
    inactive_user_fraction: float = 0.25  # users with 2..19 reviews, dropped by min_reviews = 20
    interests_per_user: int = 3
    interest_probability: float = 0.7
    session_probability: float = 0.5
    missing_meta_fraction: float = 0.01
    seed: int = 0

    def __post_init__(self):
        for name in ("users", "items", "categories", "interests_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"raw synthetic data: {name} must be >= 1, got {getattr(self, name)}")
        if self.categories > self.items:
            raise ValueError("raw synthetic data: need at least as many items as categories")


def _review_counts(config: RawConfig, rng) -> np.ndarray:
    inactive = rng.random(config.users) < config.inactive_user_fraction
    active = 20 + rng.geometric(1.0 / (1.0 + config.mean_extra_reviews), size=config.users) - 1
    return np.where(inactive, rng.integers(2, 20, size=config.users), active)


def generate(config: RawConfig):
    """Returns (user, item, time) arrays of the reviews and the category of each item (1-based ids)."""
    rng = np.random.default_rng(config.seed)
    category_of_item = np.concatenate([[0], rng.integers(1, config.categories + 1, size=config.items)])
    category_of_item[1 : config.categories + 1] = np.arange(1, config.categories + 1)  # no empty category
    # Items of each category, with Zipf popularity inside the category.
    order = np.argsort(category_of_item[1:], kind="stable") + 1
    sizes = np.bincount(category_of_item[1:], minlength=config.categories + 1)[1:]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    popularity = 1.0 / np.arange(1, config.items + 1) ** 1.1
    weights = popularity[rng.permutation(config.items)][order - 1]
    cumulative = np.cumsum(weights)
    low = np.concatenate([[0.0], cumulative])[starts[:-1]]
    high = cumulative[starts[1:] - 1]

    counts = _review_counts(config, rng)
    total = int(counts.sum())
    user = np.repeat(np.arange(1, config.users + 1), counts)
    interests = rng.integers(1, config.categories + 1, size=(config.users, config.interests_per_user))
    pick = rng.integers(0, config.interests_per_user, size=total)
    category = interests[user - 1, pick]
    category = np.where(rng.random(total) < config.interest_probability, category,
                        rng.integers(1, config.categories + 1, size=total))
    # Sessions: a review stays in the previous review's category (same user) with session_probability.
    stay = rng.random(total) < config.session_probability
    first_of_user = np.concatenate([[True], user[1:] != user[:-1]])
    stay &= ~first_of_user
    # Propagate "stay" runs: each review takes the category of the last review that did not stay.
    anchor = np.maximum.accumulate(np.where(stay, 0, np.arange(total)))
    category = category[anchor]
    u = low[category - 1] + rng.random(total) * (high[category - 1] - low[category - 1])
    item = order[np.minimum(np.searchsorted(cumulative, u, side="right"), order.size - 1)]
    # Times: each user starts somewhere in 2000-2013 and reviews every few days (ties happen).
    start = rng.integers(946_684_800, 1_356_998_400, size=config.users)
    gaps = rng.integers(0, 5, size=total) * 86_400
    gaps[first_of_user] = 0
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.flatnonzero(first_of_user)], counts)
    time = start[user - 1] + offsets
    shuffle = rng.permutation(total)
    return user[shuffle], item[shuffle], time[shuffle], category_of_item


def _asin(item: int) -> str:
    return f"B{item:09d}"


def _reviewer(user: int) -> str:
    return f"A{user:013X}"


def write(config: RawConfig, output_dir: str, log=print) -> dict:
    """Writes reviews_Books.json and meta_Books.json into ``output_dir``; returns counts."""
    import time as clock

    os.makedirs(output_dir, exist_ok=True)
    user, item, when, category_of_item = generate(config)
    rng = np.random.default_rng(config.seed + 1)
    reviews_path = os.path.join(output_dir, "reviews_Books.json")
    with open(reviews_path, "w") as f:
        lines = []
        for u, i, t, stars in zip(user.tolist(), item.tolist(), when.tolist(), rng.integers(1, 6, user.size).tolist()):
            day = clock.gmtime(t)
            lines.append(json.dumps({
                "reviewerID": _reviewer(u),
                "asin": _asin(i),
                "reviewerName": f"Reader {u}",
                "helpful": [0, 0],
                "reviewText": f"A synthetic review of book {i}.",
                "overall": float(stars),
                "summary": "Synthetic",
                "unixReviewTime": t,
                "reviewTime": f"{day.tm_mon:02d} {day.tm_mday}, {day.tm_year}",
            }))
            if len(lines) == 100_000:
                f.write("\n".join(lines) + "\n")
                lines = []
        if lines:
            f.write("\n".join(lines) + "\n")
    missing = rng.random(config.items + 1) < config.missing_meta_fraction
    meta_path = os.path.join(output_dir, "meta_Books.json")
    with open(meta_path, "w") as f:
        for i in range(1, config.items + 1):
            if missing[i]:
                continue
            c = int(category_of_item[i])
            record = {
                "asin": _asin(i),
                "title": f"Book {i}",
                "price": round(float(rng.random() * 30), 2),
                "salesRank": {"Books": int(rng.integers(1, 10**6))},
                "categories": [["Books", f"Genre {c % 17}", f"Topic {c}"], ["Kindle Store", "Kindle eBooks"]],
            }
            f.write(repr(record) + "\n")
    counts = {"reviews": int(user.size), "users": config.users, "items": config.items, "categories": config.categories}
    if log:
        log(f"wrote {user.size:,} reviews of {config.users:,} users and metadata of {config.items - int(missing[1:].sum()):,} "
            f"items")
    return counts
