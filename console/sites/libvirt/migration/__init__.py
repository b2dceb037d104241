"""One live migration through libvirt, in any mode, with telemetry recorded as it happens.

Modes (one prepare step each, `modes.py`):
- stock: libvirt's live precopy, the stream straight over the WAN.
- drop-cache: the guest drops its clean page cache first (the paper's straw man), then stock.
- zstd: QEMU multifd with zstd compression (the strongest stock peer).
- teleport: the stream goes source QEMU -> `relay send` (source host) -> WAN -> `relay recv`
  (destination host) -> destination QEMU; the map comes from the guest agent when the
  migration starts.

The migration is client-managed (`migrate3` with both connections held here, `transfer.py`):
libvirt starts the destination QEMU with `-incoming`, the source QEMU connects to the URI we
give. A failed or aborted migration leaves the source VM running and the destination discarded
(libvirt's own cleanup, then `outcome.py`), and the record says why. Afterwards the destination
guest is checked (`destination.py`: domain state, its serial console for oops and panics, its
agent, the page cache against the disk) and the record says where the VM really runs — a site,
or nowhere — never a site assumed from how far the run got.

The rooms: `plan` (what a run needs up front), `journal` (events into the record), `modes`,
`transfer`, `stats` (pure: samples and final counts from libvirt's and the relays' numbers),
`destination`, `outcome`, and `run` (MigrationRun, the order of it all).
"""

from pcteleport.sites.libvirt.migration.plan import (
    Aborted,
    MigrationFailed,
    Plan,
    data_disk_of,
    plan_for,
    ram_layout,
)
from pcteleport.sites.libvirt.migration.run import MigrationRun

__all__ = ["Aborted", "MigrationFailed", "MigrationRun", "Plan", "data_disk_of", "plan_for",
           "ram_layout"]
