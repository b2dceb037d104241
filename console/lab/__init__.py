"""The embedded two-site lab: network namespaces joined by an emulated WAN, a libvirtd and an
sshd per site, and guests from `scenarios/`. No Textual here; the CLI calls `commands`, other
code reads the sites config the lab writes.

How other code uses the lab:
- Sites config: `LabPaths.default().sites_toml` (`/var/lib/pcteleport/lab/sites.toml`; format in
  `config.py`): per site `libvirt_uri` (qemu+ssh, host keys checked against the lab's
  known_hosts), `ssh = {host, port, user, key, known_hosts}` for asyncssh, `image_dir`,
  `agent_socket_dir`, `wan_addr`, `wan_iface`; per VM its `data_disk` (same path at each site).
- Site hosts see their own `/srv` (`/srv/images` the image cache, `/srv/vms/<vm>/console.log`
  and the VM's disk overlays, `/srv/agents/<vm>.agent.sock` and `.shell.sock`); from the
  operator's namespace that is `<state dir>/<site>/srv` (`SitePaths.host_path`).
- Every disk is a writable qcow2 overlay (at the site the VM runs at) on a raw base image that
  every site's image cache holds with the same bytes (disks.py); a migration moves the overlays
  with libvirt's storage migration.
- `measure.measure_wan()` probes rate and RTT; `wan.switch()` changes the profile live.
- `PCTELEPORT_LAB_INSTANCE=<name>` runs a separate lab (tests use one) beside the default.
"""
