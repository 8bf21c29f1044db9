"""What the tests share: servers, brokers, network peers, polling, the CLI runner."""
