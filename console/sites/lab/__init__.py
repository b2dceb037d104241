"""The embedded two-site lab: network namespaces joined by an emulated WAN, a libvirtd and an
sshd per site, and guests from `scenarios/`. No Textual here; the CLI and the console call
`lifecycle` (up/down), `status` and `wan`, and read the sites config the lab writes."""
