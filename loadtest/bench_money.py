"""Old path of :mod:`loadtest.micro.bench_money`, kept so that recorded commands still run."""

from loadtest.micro.bench_money import main

if __name__ == "__main__":
    main()
