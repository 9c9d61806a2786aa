"""The packaged catalogue cut down to some services (for fixtures that provision only what a test uses)."""
from __future__ import annotations

from shared.catalogue import Catalogue


def only_services(catalogue: Catalogue, names: tuple[str, ...]) -> Catalogue:
    """The catalogue cut down to `names` (and their versions), in the catalogue's order."""
    unknown = set(names) - set(catalogue.names())
    assert not unknown, f"@pytest.mark.services names services the catalogue lacks: {sorted(unknown)}"
    return Catalogue(services={n: s for n, s in catalogue.services.items() if n in names}, source=catalogue.source,
                     versions={n: v for n, v in catalogue.versions.items() if n in names})
