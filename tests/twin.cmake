# The Python eager twin of the UNet (bench/twin/), the comparator of the speed benchmark against
# Python, checked equal to difftrain: network output and DDIM samples. Included from tests/CMakeLists.txt.
difftrain_python_tests(twin twin_tests.py 300 Equivalence SpeedSwitches)
