package rotation

import (
	"log/slog"
	"time"
)

// errorLogEvery is how often an error that repeats the same way (a step
// the loop retries every second) is logged again.
const errorLogEvery = time.Minute

// errorLog logs an error at once, then, while the same error repeats, at
// most once every errorLogEvery, saying how often it repeated meanwhile:
// one line a minute says as much as sixty.
type errorLog struct {
	last    string
	at      time.Time
	repeats int
}

// note logs err (at ERROR, with msg and args) unless the same error was
// logged less than errorLogEvery ago; a nil err ends the series.
func (l *errorLog) note(log *slog.Logger, now time.Time, err error, msg string, args ...any) {
	if err == nil {
		*l = errorLog{}
		return
	}
	if err.Error() == l.last && now.Sub(l.at) < errorLogEvery {
		l.repeats++
		return
	}
	if err.Error() == l.last && l.repeats > 0 {
		args = append(args, "repeatedSinceLastLogged", l.repeats)
	}
	log.Error(msg, append(args, "error", err.Error())...)
	*l = errorLog{last: err.Error(), at: now}
}
