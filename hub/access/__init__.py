"""Personal access to datasets, decided by their owners: requests with a purpose, an approval
reference and an end (:mod:`.service`, its page :mod:`.pages`), the grants they become
(:mod:`.store`), what a spawn takes from them (:mod:`.spawn`), and the stop of servers whose
grant ended (:mod:`.enforce`); :mod:`.client` is ``medhub access``."""
