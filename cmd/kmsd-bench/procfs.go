package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// memStat is what /proc/PID/status says about a process's memory, in KiB.
// VmHWM is the peak resident set size since the process started (it
// cannot be reset), VmRSS the current one.
type memStat struct {
	HWM, RSS uint64
}

func readMem(pid int) (memStat, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStat{}, err
	}
	defer f.Close()
	var m memStat
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		var dst *uint64
		switch {
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &m.HWM
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &m.RSS
		default:
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return memStat{}, fmt.Errorf("/proc/%d/status: %q: %w", pid, line, err)
		}
		*dst = v
	}
	if err := s.Err(); err != nil {
		return memStat{}, err
	}
	if m.HWM == 0 && m.RSS == 0 {
		return memStat{}, fmt.Errorf("/proc/%d/status: no VmHWM/VmRSS", pid)
	}
	return m, nil
}

// clockTicks is USER_HZ; 100 on every Linux the project targets.
const clockTicks = 100

// readCPU returns the user+system CPU time the process has used so far.
func readCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain
	// spaces; fields are counted after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// readPIDFile reads a decimal pid from a file.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: not a pid: %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// readMachineCPU returns the CPU time all processes of the machine spent
// in user and system mode (first line of /proc/stat: user, nice, system),
// excluding idle, I/O wait and interrupt time.
func readMachineCPU() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return 0, errors.New("/proc/stat: empty")
	}
	fields := strings.Fields(s.Text())
	if len(fields) < 4 || fields[0] != "cpu" {
		return 0, errors.New("/proc/stat: malformed")
	}
	var ticks uint64
	for _, v := range fields[1:4] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
