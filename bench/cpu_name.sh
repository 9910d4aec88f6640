# Sourced by the bench scripts: cpu_name prints the CPU's model name with its family and
# model numbers ("AMD EPYC (family 26 model 2)"), as `clipscope bench` and bench/all.py
# do: a virtual machine's "AMD EPYC" is Zen 4 or Zen 5, which run at different speeds.
cpu_name() {
    field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2 | xargs; }
    local name family model
    name=$(field 'model name')
    family=$(field 'cpu family')
    model=$(field 'model')
    if [ -n "$family" ] && [ -n "$model" ]; then
        echo "${name:-$(uname -m)} (family $family model $model)"
    else
        echo "${name:-$(uname -m)}"
    fi
}
