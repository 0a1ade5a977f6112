"""The dispatcher: one per fleet (a lease), it admits queued jobs in fair-share and priority
order, reserving rate capacity and budget, and hands each admitted job to the queue with its
ticket (`worker.ticket`). It meets the job package only through that ticket."""
