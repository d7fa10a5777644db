from .cli import entry

if __name__ == "__main__":  # guarded: worker processes re-import this module on Windows
    entry()
