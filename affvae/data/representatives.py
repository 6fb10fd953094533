"""One object per class of a dataset folder, for computing its affinity matrix.

A class is represented by its ``template_<class>`` file when the folder has one,
else by its medoid: of the class's first :data:`MAX_MEMBERS` files (in name order),
the one with the highest summed similarity to the others under the metric.  A
medoid is a real object, not the blur that averaging rotated copies would give.
"""

from __future__ import annotations

import numpy as np

from affvae.affinity.matrix import constant_error, medoid_index
from affvae.affinity.metrics import ConstantObject
from affvae.errors import AffinityError
from affvae.transforms.augment import resize_to_box
from affvae.volumes import read_volume

#: Members read per class when a class has no template.
MAX_MEMBERS = 32


def class_representatives(index, metric: str = "fsc", max_members: int = MAX_MEMBERS,
                          size: int | None = None) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """One object per class: its template, else the class medoid.

    Without a ``template_<class>`` file, a class is represented by its medoid: of
    the class's first ``max_members`` files (in name order), the one with the highest
    mean similarity to the others under ``metric``.  A medoid is a real object, not
    the blur that averaging rotated copies would give.  Returns the classes, the
    stacked objects and, per class, where the representative came from.
    """
    # Training classes first (in their order), then held-out classes, then classes
    # that only have a template.
    classes = list(dict.fromkeys([*index.classes, *sorted(set(index.labels.tolist())),
                                  *sorted(index.templates)]))
    objs, source = [], {}
    for c in classes:
        if c in index.templates:
            objs.append(read_volume(index.root / index.templates[c]))
            source[c] = index.templates[c]
            continue
        members = [p for p, lab in zip(index.paths, index.labels) if lab == c][:max_members]
        stack = np.stack([read_volume(index.root / p) for p in members])
        try:
            k = medoid_index(stack, metric)
        except ConstantObject as e:
            raise constant_error(index.root / members[e.index], c, metric) from None
        objs.append(stack[k])
        source[c] = f"medoid of {len(members)}: {members[k]}"
    shapes = {o.shape for o in objs}
    if len(shapes) > 1:
        raise AffinityError(
            f"{index.root}: class representatives have different shapes "
            f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes))})"
        )
    X = np.stack(objs)
    if size is not None:
        X = resize_to_box(X, size)
    return classes, X, source
