"""The learned blind baseline (synth/blind_classifier.py): it learns what the words give away, and only that,
scored on images it never trained on."""
import numpy as np

from hopchain_jax.synth.blind_classifier import TfidfVectorizer, classifier_baseline, ngrams


def _records(question, answer, images=200, per_image=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(images):
        for j in range(per_image):
            q, a = question(k, j, rng), answer(k, j, rng)
            out.append({"question": q, "answer": a, "image": {"sha256": f"img{k:04d}"}})
    return out


KINDS = ("dots", "pips", "windows", "petals", "stars")


def test_it_learns_answers_the_words_give_away():
    # the asked part decides the answer: a text-only model can learn it
    recs = _records(lambda k, j, r: f"How many {KINDS[(k + j) % 5]} does the red object have?",
                    lambda k, j, r: 1 + (k + j) % 5)
    assert classifier_baseline(recs)["accuracy"] > 0.95


def test_it_is_at_chance_when_only_the_image_knows():
    recs = _records(lambda k, j, r: f"How many {KINDS[(k + j) % 5]} does the red object have?",
                    lambda k, j, r: int(r.integers(1, 6)))
    res = classifier_baseline(recs)
    assert res["queries"] == 600 and 0.1 < res["accuracy"] < 0.32, res


def test_folds_keep_an_images_questions_together():
    # every question of an image names that image and shares its (random) answer: a split by record would
    # learn "scene 17" -> its answer from the image's other questions; a split by image cannot
    recs = _records(lambda k, j, r: f"In scene {k}, how many balls are there?", lambda k, j, r: 1 + (k * 7) % 5,
                    per_image=4)
    assert classifier_baseline(recs)["accuracy"] < 0.35
    assert classifier_baseline([])["accuracy"] is None


def test_tfidf_rows_are_unit_and_use_bigrams():
    assert ngrams("How many 3s?") == ["how", "many", "3", "s", "how many", "many 3", "3 s"]
    vec = TfidfVectorizer(min_df=1).fit(["red ball", "blue ball", "red mug"])
    x = vec.transform(["red ball", "green kite"])
    assert np.allclose(np.linalg.norm(x[0]), 1) and not x[1].any() and "red ball" in vec.index
