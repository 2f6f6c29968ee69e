"""The hub side of harvests: requests that dataset owners address to sites, and the deliveries
that the sites' edge nodes make into versioned datasets (:mod:`.service`, :mod:`.store`,
:mod:`.client` for ``medhub harvest``)."""
