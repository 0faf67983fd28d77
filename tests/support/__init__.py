"""Fault-injection support for the reliability suite (issue 7).

relay.py    Relay (freeze / heal / close between client and sshd), Tarpit, SlowAuth
            (banner then silence), StallingSSHServer (kex done, user auth never answered)
sshconf.py  a private ssh config + known_hosts adding aliases that point at those servers
faults.py   scoped-pool kwargs, full (tmpfs) and read-only remote dirs, testbed daemon outages
netns.py    a silent blackhole address in a network namespace created by the test
remote.py   independent read-back over the OpenSSH client, polling, fd / RSS counters
"""
