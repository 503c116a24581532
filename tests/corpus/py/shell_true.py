import subprocess


def archive(folder: str) -> int:
    result = subprocess.run("tar czf backup.tgz " + folder, shell=True, check=False)
    return result.returncode
