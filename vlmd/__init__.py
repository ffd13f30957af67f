"""vlmd: evaluate vision-language models and record what every answer cost, live.

The public face of the package; everything else is an implementation detail.
"""

from vlmd.config import Config as Config
from vlmd.config import ConfigError as ConfigError
from vlmd.daemon import Daemon as Daemon
from vlmd.daemon import serve as serve
from vlmd.feed import Feed as Feed
from vlmd.live import Live as Live
from vlmd.log import Appended as Appended
from vlmd.log import Event as Event
from vlmd.log import EventLog as EventLog
from vlmd.projections.summary import summarize as summarize
from vlmd.projections.tracker import Tracker as Tracker

__version__ = "0.1.0"
