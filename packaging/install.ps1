# Install fitchat with the llama.cpp backend this machine can use (Windows PowerShell 5.1 or PowerShell 7).
#
#   CUDA  when an NVIDIA GPU (nvidia-smi) and a CUDA toolkit (nvcc) are present
#   CPU   otherwise
#
# fitchat goes into its own environment, made with pipx, uv tool or a plain venv (the first one
# found, or -Method). Running it again changes nothing that is already right: it checks the
# installed llama.cpp build with fitchat's own hardware detection and rebuilds llama-cpp-python
# only when the backend is wrong. Every command it runs is printed; -DryRun prints the plan and
# runs nothing. The same steps as install.sh.
#
#   powershell -ExecutionPolicy Bypass -File packaging\install.ps1 [-Backend auto|cuda|cpu]
#       [-Method auto|pipx|uv|venv] [-Prefix DIR] [-Source SPEC] [-Python PY]
#       [-FindLinks DIR] [-NoIndex] [-Upgrade] [-Rebuild] [-DryRun]
[CmdletBinding()]
param(
    [ValidateSet("auto", "cuda", "cpu")] [string]$Backend = "auto",
    [ValidateSet("auto", "pipx", "uv", "venv")] [string]$Method = "auto",
    [string]$Prefix = "",
    [string]$Source = "",
    [string]$Python = "",
    [string]$FindLinks = "",
    [switch]$NoIndex,
    [switch]$Upgrade,
    [switch]$Rebuild,
    [switch]$DryRun
)

# Not "Stop": Windows PowerShell 5.1 turns a native command's stderr into a terminating error then.
# Each step checks $LASTEXITCODE itself.
$ErrorActionPreference = "Continue"
$Done = New-Object System.Collections.Generic.List[string]

function Say([string]$Text) { Write-Host "fitchat-install: $Text" }
function Die([string]$Text) { [Console]::Error.WriteLine("fitchat-install: error: $Text"); exit 1 }
function Did([string]$Text) { $Done.Add($Text); Say $Text }
function Has([string]$Name) { return [bool](Get-Command $Name -ErrorAction SilentlyContinue) }

# Print a command, then run it (or only print it in a dry run). $BuildEnv is shown in front and set for it.
function Invoke-Step([string[]]$Cmd, [hashtable]$BuildEnv = @{}) {
    $shown = (($BuildEnv.GetEnumerator() | Sort-Object Name | ForEach-Object { "`$env:$($_.Name)=`"$($_.Value)`";" }) -join " ")
    $line = ($shown + " " + ($Cmd -join " ")).Trim()
    if ($DryRun) { Write-Host "  would run: $line"; return }
    Write-Host "  + $line"
    $saved = @{}
    foreach ($k in $BuildEnv.Keys) { $saved[$k] = [Environment]::GetEnvironmentVariable($k); Set-Item "env:$k" $BuildEnv[$k] }
    try {
        $exe = $Cmd[0]; $rest = @(); if ($Cmd.Length -gt 1) { $rest = $Cmd[1..($Cmd.Length - 1)] }
        & $exe @rest
        if ($LASTEXITCODE -ne 0) { Die "command failed (exit $LASTEXITCODE): $line" }
    } finally {
        foreach ($k in $saved.Keys) {
            if ($null -eq $saved[$k]) { Remove-Item "env:$k" -ErrorAction SilentlyContinue } else { Set-Item "env:$k" $saved[$k] }
        }
    }
}

if ($NoIndex -and -not $FindLinks) { Die "-NoIndex needs -FindLinks (where else would packages come from?)" }
if ($FindLinks -and -not (Test-Path -PathType Container $FindLinks)) { Die "-FindLinks: no such folder: $FindLinks" }

# --------------------------------------------------------------------------- the machine

$GpuNames = ""
if (Has "nvidia-smi") {
    $lines = & nvidia-smi -L 2>$null
    $GpuNames = (($lines | Where-Object { $_ -match '^GPU \d+: (.*) \(UUID' } | ForEach-Object { $Matches[1] }) -join ", ")
}
$Nvcc = ""
if (Has "nvcc") { $Nvcc = (Get-Command nvcc).Source }
elseif ($env:CUDA_PATH -and (Test-Path (Join-Path $env:CUDA_PATH "bin\nvcc.exe"))) { $Nvcc = Join-Path $env:CUDA_PATH "bin\nvcc.exe" }
$CudaRelease = ""
if ($Nvcc) {
    $v = (& $Nvcc --version 2>$null) -join "`n"
    if ($v -match 'release (\d+\.\d+)') { $CudaRelease = $Matches[1] }
}

Say "machine: Windows $env:PROCESSOR_ARCHITECTURE"
Say ("NVIDIA GPU: " + $(if ($GpuNames) { $GpuNames } else { "none found (no nvidia-smi, or it lists no GPU)" }))
Say ("CUDA toolkit: " + $(if ($Nvcc) { "$CudaRelease ($Nvcc)" } else { "none (no nvcc on PATH or in CUDA_PATH)" }))

if ($Backend -eq "auto") {
    if ($GpuNames -and $Nvcc) { $Backend = "cuda"; $Reason = "NVIDIA GPU and CUDA toolkit found" }
    elseif ($GpuNames) { $Backend = "cpu"; $Reason = "NVIDIA GPU found but no CUDA toolkit: install one (nvcc), then run this again for a CUDA build" }
    elseif ($Nvcc) { $Backend = "cpu"; $Reason = "CUDA toolkit found but no NVIDIA GPU (pass -Backend cuda to build for CUDA anyway)" }
    else { $Backend = "cpu"; $Reason = "no GPU that llama.cpp can use" }
} else { $Reason = "chosen with -Backend" }
Say "backend: $Backend ($Reason)"
if ($Backend -eq "cuda" -and -not $Nvcc) {
    Die "a CUDA build needs the CUDA toolkit (nvcc): install it (https://developer.nvidia.com/cuda-downloads), then run this again"
}

$BuildEnv = @{ "CMAKE_BUILD_PARALLEL_LEVEL" = "$([Environment]::ProcessorCount)" }
$cmakeArgs = (@($(if ($Backend -eq "cuda") { "-DGGML_CUDA=on" }), $env:CMAKE_ARGS) | Where-Object { $_ }) -join " "
if ($cmakeArgs) { $BuildEnv["CMAKE_ARGS"] = $cmakeArgs }
if ($Backend -eq "cuda" -and -not (Has "nvcc")) { $BuildEnv["CUDACXX"] = $Nvcc }
if ($FindLinks) { $FindLinks = (Resolve-Path $FindLinks).Path; $BuildEnv["PIP_FIND_LINKS"] = $FindLinks; $BuildEnv["UV_FIND_LINKS"] = $FindLinks }
if ($NoIndex) { $BuildEnv["PIP_NO_INDEX"] = "1"; $BuildEnv["UV_NO_INDEX"] = "1" }

# --------------------------------------------------------------------------- Python and the source

if (-not $Python) {
    foreach ($c in @("py", "python3", "python")) {
        if (Has $c) {
            $pyArgs = @(); if ($c -eq "py") { $pyArgs = @("-3") }
            $Python = (& $c @pyArgs -c "import sys; print(sys.executable)" 2>$null)
            if ($LASTEXITCODE -eq 0 -and $Python) { break } else { $Python = "" }
        }
    }
}
if (-not $Python) { Die "no Python found: install Python 3.10 or newer from python.org (or pass -Python)" }
& $Python -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>$null
if ($LASTEXITCODE -ne 0) { Die "$Python is not Python 3.10 or newer: install one, or pass -Python" }
Say "python: $Python ($(& $Python -c 'import platform; print(platform.python_version())'))"

$Here = Split-Path -Parent $MyInvocation.MyCommand.Path
if (-not $Source) {
    $pyproject = Join-Path $Here "..\pyproject.toml"
    if ((Test-Path $pyproject) -and (Select-String -Quiet -Pattern '^name = "fitchat"' -Path $pyproject)) {
        $Source = (Resolve-Path (Join-Path $Here "..")).Path
    } else { $Source = "fitchat" }
}
Say "source: $Source"

if (-not $FindLinks -and -not (Has "cl") -and -not (Has "clang") -and -not (Has "gcc")) {
    Say "note: no C/C++ compiler on PATH; llama-cpp-python builds from source with Visual Studio Build Tools ('Desktop development with C++'). Run this from a 'Developer PowerShell for VS' if the build fails."
}

# --------------------------------------------------------------------------- pipx, uv or venv

if ($Method -eq "auto") {
    if (Has "pipx") { $Method = "pipx" } elseif (Has "uv") { $Method = "uv" } else { $Method = "venv" }
}
if ($Method -eq "pipx" -and -not (Has "pipx")) { Die "pipx is not installed: 'py -m pip install --user pipx', or use -Method venv" }
if ($Method -eq "uv" -and -not (Has "uv")) { Die "uv is not installed: 'py -m pip install --user uv', or use -Method venv" }

if (-not $Prefix) { $Prefix = Join-Path $env:LOCALAPPDATA "fitchat" ; $CustomPrefix = $false } else { $CustomPrefix = $true }
$BinDir = Join-Path $Prefix "bin"
if ($CustomPrefix) {
    $env:PIPX_HOME = Join-Path $Prefix "pipx"; $env:PIPX_BIN_DIR = $BinDir
    $env:UV_TOOL_DIR = Join-Path $Prefix "uv\tools"; $env:UV_TOOL_BIN_DIR = $BinDir
}
switch ($Method) {
    "pipx" { $home_ = $(if ($env:PIPX_HOME) { $env:PIPX_HOME } else { (& pipx environment --value PIPX_HOME) }); $EnvDir = Join-Path $home_ "venvs\fitchat" }
    "uv"   { $tools = $(if ($env:UV_TOOL_DIR) { $env:UV_TOOL_DIR } else { (& uv tool dir) }); $EnvDir = Join-Path $tools "fitchat" }
    "venv" { $EnvDir = Join-Path $Prefix "venv" }
}
$EnvPy = Join-Path $EnvDir "Scripts\python.exe"
Say "method: $Method (environment: $EnvDir)"

function Get-FitchatVersion {
    if (-not (Test-Path $EnvPy)) { return "-" }
    $v = & $EnvPy -c "import importlib.metadata as m, fitchat.cli.main; print(m.version('fitchat'))" 2>$null
    if ($LASTEXITCODE -eq 0 -and $v) { return $v } else { return "-" }
}
function Get-LlamaBackend {
    if (-not (Test-Path $EnvPy)) { return @("missing", "-") }
    $code = @'
from fitchat.model.hardware import probe_llama_build
b = probe_llama_build()
if b.error:
    state = "missing" if b.version == "not installed" else "broken"
elif b.has_device("CUDA"):
    state = "cuda"
else:
    state = "cpu"
print(state, b.version)
'@
    $out = & $EnvPy -c $code 2>$null
    if ($LASTEXITCODE -ne 0 -or -not $out) { return @("broken", "-") }
    return ($out -split " ", 2)
}

# --------------------------------------------------------------------------- 1. fitchat itself

$Installed = Get-FitchatVersion
if ($Installed -ne "-" -and -not $Upgrade) {
    Say "fitchat $Installed is already installed in $EnvDir (-Upgrade reinstalls it)"
} else {
    switch ($Method) {
        "pipx" {
            $cmd = @("pipx", "install"); if ($Installed -ne "-") { $cmd += "--force" }
            Invoke-Step ($cmd + @("--python", $Python, $Source)) $BuildEnv
        }
        "uv" {
            $cmd = @("uv", "tool", "install"); if ($Installed -ne "-") { $cmd += "--reinstall-package=fitchat" }
            Invoke-Step ($cmd + @("--python", $Python, $Source)) $BuildEnv
        }
        "venv" {
            if (-not (Test-Path $EnvPy)) {
                Invoke-Step @($Python, "-m", "venv", $EnvDir)
                if (-not $DryRun) { Did "created the virtual environment $EnvDir" }
            }
            Invoke-Step @($EnvPy, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", $Source) $BuildEnv
        }
    }
    if (-not $DryRun) { Did "installed fitchat $(Get-FitchatVersion) with $Method" }
}

# --------------------------------------------------------------------------- 2. the llama.cpp backend

if ($DryRun -and -not (Test-Path $EnvPy)) {
    Say "would check the llama.cpp build with fitchat's detection, and rebuild llama-cpp-python for $Backend if it differs"
} else {
    $have, $ver = Get-LlamaBackend
    if ($have -eq $Backend -and -not $Rebuild) {
        Say "llama-cpp-python $ver already has the $Backend backend"
    } else {
        Say "llama-cpp-python $ver has the $have backend, $Backend is wanted: rebuilding it (this takes a few minutes)"
        $req = $(if ($ver -match '^\d') { "llama-cpp-python==$ver" } else { "llama-cpp-python" })
        switch ($Method) {
            "pipx" { Invoke-Step @("pipx", "runpip", "fitchat", "install", "--force-reinstall", "--no-cache-dir", "--no-deps", $req) $BuildEnv }
            "uv"   { Invoke-Step @("uv", "pip", "install", "--python", $EnvPy, "--reinstall", "--no-cache", "--no-deps", $req) $BuildEnv }
            "venv" { Invoke-Step @($EnvPy, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--force-reinstall", "--no-cache-dir", "--no-deps", $req) $BuildEnv }
        }
        if (-not $DryRun) {
            $now, $nowVer = Get-LlamaBackend
            if ($now -ne $Backend) { Die "llama-cpp-python was rebuilt but its backend is '$now', not '$Backend': check the build output above ('fitchat doctor' says more)" }
            Did "rebuilt llama-cpp-python $nowVer with the $Backend backend"
        }
    }
}

# --------------------------------------------------------------------------- 3. the fitchat command

if ($Method -eq "venv") {
    $shim = Join-Path $BinDir "fitchat.cmd"
    $target = Join-Path $EnvDir "Scripts\fitchat.exe"
    $body = "@`"$target`" %*"
    if ((Test-Path $shim) -and ((Get-Content -Raw $shim).Trim() -eq $body)) {
        Say "$shim already runs $target"
    } elseif ($DryRun) {
        Write-Host "  would write: $shim"
    } else {
        New-Item -ItemType Directory -Force -Path $BinDir | Out-Null
        Set-Content -Path $shim -Value $body -Encoding ASCII
        Did "wrote $shim"
    }
}
$userPath = [Environment]::GetEnvironmentVariable("Path", "User")
if (-not (($env:Path -split ";") -contains $BinDir) -and -not (($userPath -split ";") -contains $BinDir)) {
    Say "note: $BinDir is not on PATH; add it: [Environment]::SetEnvironmentVariable('Path', `"$BinDir;`" + [Environment]::GetEnvironmentVariable('Path','User'), 'User')"
}

if ($DryRun) { Say "dry run: nothing was changed" }
elseif ($Done.Count -eq 0) { Say "nothing to do: fitchat is installed with the $Backend backend" }
else {
    Say "done; what changed:"
    $Done | ForEach-Object { Write-Host "  - $_" }
    Say "next: fitchat doctor"
}
